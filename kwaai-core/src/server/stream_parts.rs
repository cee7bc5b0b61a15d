//! What the streaming forward and backward handlers share: reading every request part under a
//! size bound, running the work off the async threads, and streaming the reply parts back.

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::p2p::RequestStream;

/// Every part of a streamed request, refused past `max_bytes` in all (`what` names the call).
pub(crate) async fn collect_parts(requests: RequestStream, max_bytes: usize, what: &str) -> Result<Vec<Vec<u8>>> {
    let (parts, _) = requests
        .try_fold((Vec::new(), 0usize), |(mut parts, total), part| async move {
            let total = total.saturating_add(part.len());
            if total > max_bytes {
                return Err(Error::new(ErrorKind::Protocol, format!("{what} request too large")));
            }
            parts.push(part);
            Ok((parts, total))
        })
        .await?;
    Ok(parts)
}

/// Runs `f` on a blocking thread (`what` names the work in a failure).
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Internal, format!("the {what} task failed"), e))?
}

/// The reply parts of a streamed call, or its error as the only item.
pub(crate) fn reply_parts(replies: Result<Vec<Vec<u8>>>) -> BoxStream<'static, Result<Vec<u8>>> {
    match replies {
        Ok(parts) => futures::stream::iter(parts.into_iter().map(Ok)).boxed(),
        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
    }
}
