//! Token streams: [`crate::model::generate`] driven through a remote inference session on a
//! worker thread, with cancellation.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use futures::Stream;
use tokio::sync::{mpsc, watch};

use super::session::AsyncInferenceSession;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{generate, ClientModel, GenerationConfig, TextDelta, TextTokenizer};

/// Tokens buffered between the worker and a slow reader.
const TOKEN_BUFFER: usize = 64;

/// One generated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedToken {
    /// Its id.
    pub id: u32,
    /// The text it adds to what was generated before (empty without a tokenizer, or while a
    /// multi-byte character is incomplete; a character still incomplete when the generation ends is
    /// never sent).
    pub text: String,
}

/// The tokens of one generation, as they come: an [`Iterator`] (blocking) and a [`Stream`].
/// Dropping it or calling [`TokenStream::cancel`] stops the generation and closes every server
/// stream, so the servers free their caches.
pub struct TokenStream {
    tokens: mpsc::Receiver<Result<GeneratedToken>>,
    cancel: watch::Sender<bool>,
    worker: Option<JoinHandle<()>>,
}

impl TokenStream {
    /// Starts generating on a worker thread that drives `session` on `runtime`.
    pub(crate) fn start(
        runtime: tokio::runtime::Handle,
        mut session: AsyncInferenceSession,
        model: Arc<ClientModel>,
        tokenizer: Option<Arc<TextTokenizer>>,
        prompt: Vec<u32>,
        config: GenerationConfig,
    ) -> Result<TokenStream> {
        let (sender, tokens) = mpsc::channel(TOKEN_BUFFER);
        let (cancel, cancelled) = watch::channel(false);
        let worker = std::thread::Builder::new()
            .name("kwaai-generate".into())
            .spawn(move || {
                let mut text = TextDelta::default();
                let blocks = |hidden: &candle_core::Tensor| -> Result<candle_core::Tensor> {
                    let mut cancelled = cancelled.clone();
                    runtime.block_on(async {
                        tokio::select! {
                            biased;
                            _ = cancelled.wait_for(|c| *c) => Err(Error::new(ErrorKind::Closed, "generation cancelled")),
                            out = session.step(hidden) => out,
                        }
                    })
                };
                let on_token = |id: u32| {
                    let text = tokenizer.as_ref().map_or_else(String::new, |t| text.push(t, id));
                    let _ = sender.blocking_send(Ok(GeneratedToken { id, text }));
                };
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    generate(&model, &prompt, &config, blocks, on_token)
                }))
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "the generation thread panicked")));
                runtime.block_on(session.close());
                if let Err(e) = outcome {
                    if e.kind() != ErrorKind::Closed || !*cancelled.borrow() {
                        let _ = sender.blocking_send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::with_source(ErrorKind::Internal, "starting the generation thread", e))?;
        Ok(TokenStream { tokens, cancel, worker: Some(worker) })
    }

    /// A stream that yields `tokens` from a thread of its own, as a generation delivers its tokens,
    /// then ends: lets a host test or benchmark its token handling without a swarm.
    pub fn replay(tokens: Vec<GeneratedToken>) -> Result<TokenStream> {
        let (sender, receiver) = mpsc::channel(TOKEN_BUFFER);
        let (cancel, cancelled) = watch::channel(false);
        let worker = std::thread::Builder::new()
            .name("kwaai-replay".into())
            .spawn(move || {
                for token in tokens {
                    if *cancelled.borrow() || sender.blocking_send(Ok(token)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::with_source(ErrorKind::Internal, "starting the replay thread", e))?;
        Ok(TokenStream { tokens: receiver, cancel, worker: Some(worker) })
    }

    /// Stops the generation and waits until every server stream is closed.
    pub fn cancel(&mut self) {
        let _ = self.cancel.send(true);
        self.tokens.close();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        while self.tokens.try_recv().is_ok() {}
    }

    /// The next token, waiting for it; `None` when the generation is over. Do not call it from
    /// inside an async runtime (poll the stream there instead).
    pub fn next_token(&mut self) -> Option<Result<GeneratedToken>> {
        self.tokens.blocking_recv()
    }
}

impl Iterator for TokenStream {
    type Item = Result<GeneratedToken>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_token()
    }
}

impl Stream for TokenStream {
    type Item = Result<GeneratedToken>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.tokens.poll_recv(cx)
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        // The worker sees the flag (or the closed channel) and closes the server streams itself.
        let _ = self.cancel.send(true);
        self.tokens.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: u32) -> Vec<GeneratedToken> {
        (0..n).map(|id| GeneratedToken { id, text: format!("<{id}>") }).collect()
    }

    #[test]
    fn a_replay_yields_every_token_in_order_then_ends() {
        let stream = TokenStream::replay(tokens(200)).unwrap();
        let got: Vec<GeneratedToken> = stream.map(|t| t.unwrap()).collect();
        assert_eq!(got, tokens(200));
    }

    #[test]
    fn cancelling_a_replay_stops_it_and_drains_the_buffer() {
        let mut stream = TokenStream::replay(tokens(10_000)).unwrap();
        assert_eq!(stream.next_token().unwrap().unwrap().id, 0);
        stream.cancel();
        assert!(stream.next_token().is_none());
    }
}
