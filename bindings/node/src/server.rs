//! `Server`: a span of a model's blocks served to the swarm from a node.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kwaai_core::server::{Server as CoreServer, ServerConfig, Span};
use kwaai_core::tensor::DType;
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Task};
use napi_derive::napi;

use crate::error::to_js;
use crate::node::Node;

/// What to serve (Petals' `run_server` options, camelCase).
#[napi(object)]
pub struct ServeOptions {
    /// A model directory (config.json and safetensors).
    pub model_path: String,
    /// The blocks to serve, `"start:end"` (end exclusive).
    pub block_indices: Option<String>,
    /// How many blocks to serve, chosen where the swarm needs them.
    pub num_blocks: Option<u32>,
    /// The model's DHT prefix (default: the directory's name).
    pub dht_prefix: Option<String>,
    /// Requests per second to announce.
    pub throughput: Option<f64>,
    /// `"float32"` or `"bfloat16"` (default: the checkpoint's, float32 becoming bfloat16).
    pub torch_dtype: Option<String>,
}

/// A running server. `shutdown()` announces it OFFLINE and frees its sessions.
#[napi]
pub struct Server {
    inner: Arc<Mutex<CoreServer>>,
    start: u32,
    end: u32,
    dht_prefix: String,
}

fn config_of(options: &ServeOptions) -> kwaai_core::Result<ServerConfig> {
    let model_dir = PathBuf::from(&options.model_path);
    let block_indices = options.block_indices.as_deref().map(Span::parse).transpose()?;
    let dht_prefix = match &options.dht_prefix {
        Some(prefix) => prefix.clone(),
        None => kwaai_core::client::dht_prefix_for_dir(&model_dir)?,
    };
    let torch_dtype = options.torch_dtype.as_deref().map(DType::from_name).transpose()?;
    Ok(ServerConfig {
        model_dir,
        block_indices,
        num_blocks: options.num_blocks,
        dht_prefix: Some(dht_prefix),
        throughput: options.throughput,
        torch_dtype,
        ..ServerConfig::default()
    })
}

#[napi]
impl Server {
    /// Loads the blocks, serves them from `node` and announces them; resolves once ONLINE.
    #[napi(ts_return_type = "Promise<Server>")]
    pub fn start(env: Env, node: &Node, options: ServeOptions) -> napi::Result<AsyncTask<ServeTask>> {
        let config = config_of(&options).map_err(|e| to_js(&env, &e))?;
        Ok(AsyncTask::new(ServeTask { node: node.core(), config: Some(config) }))
    }

    /// The first served block.
    #[napi(getter)]
    pub fn start_block(&self) -> u32 {
        self.start
    }

    /// One past the last served block.
    #[napi(getter)]
    pub fn end_block(&self) -> u32 {
        self.end
    }

    /// The DHT prefix the blocks are announced under.
    #[napi(getter)]
    pub fn dht_prefix(&self) -> String {
        self.dht_prefix.clone()
    }

    /// Inference sessions holding a cache now.
    #[napi(getter)]
    pub fn active_sessions(&self) -> u32 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).active_sessions() as u32
    }

    /// Announces OFFLINE and stops serving; resolves when done. Calling it again does nothing.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown(&self) -> AsyncTask<StopTask> {
        AsyncTask::new(StopTask { server: Arc::clone(&self.inner) })
    }
}

/// Starts a server on the thread pool.
pub struct ServeTask {
    node: Arc<kwaai_core::Node>,
    config: Option<ServerConfig>,
}

impl Task for ServeTask {
    type Output = Result<CoreServer, kwaai_core::Error>;
    type JsValue = Server;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let config = self.config.take().unwrap_or_default();
        Ok(CoreServer::start(&self.node, config))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Server> {
        let server = output.map_err(|e| to_js(&env, &e))?;
        let span = server.span();
        Ok(Server {
            start: span.start,
            end: span.end,
            dht_prefix: server.dht_prefix().to_owned(),
            inner: Arc::new(Mutex::new(server)),
        })
    }
}

/// Stops a server on the thread pool.
pub struct StopTask {
    server: Arc<Mutex<CoreServer>>,
}

impl Task for StopTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.server.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }
}
