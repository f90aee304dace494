//! `emlab serve RUN_DIR`: the local dashboard over a run folder (see the emlab-serve crate).
//!
//! ```text
//! emlab serve runs/default              # http://127.0.0.1:8470/
//! emlab serve runs/default --port 0     # any free port; the URL is printed
//! ```

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// Run folder written by `emlab run` (holds report.json).
    pub run_dir: PathBuf,
    /// Address to bind. Anything but a loopback address exposes model outputs and the run
    /// folder's files to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one.
    #[arg(long, default_value_t = emlab_serve::DEFAULT_PORT)]
    pub port: u16,
    /// Do not print a line per request.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let cfg = emlab_serve::ServeConfig { run_dir: a.run_dir, host: a.host.clone(), port: a.port, log_requests: !a.quiet };
    let server = emlab_serve::Server::bind(&cfg)?;
    if !server.local_addr().ip().is_loopback() {
        eprintln!(
            "emlab: warning: serving on {} (not loopback): anyone who can reach this address can read the run's answers and files",
            server.local_addr()
        );
    }
    println!("emlab: serving {} at {}  (Ctrl-C to stop)", server.run_dir().display(), server.url());
    server.run();
    Ok(())
}
