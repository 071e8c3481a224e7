//! The operator side of a running pair, the same for every frontend that serves one
//! (`remap serve` over NBD, `remap attach` over ublk): the thread that feeds the health
//! windows every second, the control socket and the metrics endpoint.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use remap_core::BlockBackend;

use crate::control::{ControlError, ControlServer};
use crate::live::Live;
use crate::metrics::{MetricsError, MetricsServer};

/// The running operator side: its threads and where it answers.
#[derive(Debug)]
pub struct OperatorSide {
    /// The feeder, and the control and metrics servers that were asked for.
    pub threads: Vec<JoinHandle<()>>,
    /// The control socket, when one was asked for.
    pub control: Option<PathBuf>,
    /// The metrics endpoint's address (port resolved), when one was asked for.
    pub metrics: Option<SocketAddr>,
}

/// Start the feeder, then the control socket at `control` and the metrics endpoint at
/// `metrics` if given. `thread_error` turns a failed thread spawn into the caller's error,
/// naming the thread; a bind failure converts through `From`.
pub fn start<M, S, E>(
    live: &Arc<Live<M, S>>,
    control: Option<&Path>,
    metrics: Option<SocketAddr>,
    thread_error: impl Fn(&'static str, io::Error) -> E,
) -> Result<OperatorSide, E>
where
    M: BlockBackend + 'static,
    S: BlockBackend + 'static,
    E: From<ControlError> + From<MetricsError>,
{
    let mut threads = vec![
        live.spawn_feeder()
            .map_err(|e| thread_error("health window", e))?,
    ];
    let mut control_at = None;
    if let Some(path) = control {
        let server = ControlServer::bind(path)?;
        threads.push(
            server
                .spawn(live.clone())
                .map_err(|e| thread_error("control socket", e))?,
        );
        control_at = Some(path.to_path_buf());
    }
    let mut metrics_at = None;
    if let Some(addr) = metrics {
        let server = MetricsServer::bind(addr)?;
        metrics_at = Some(server.local_addr());
        threads.push(
            server
                .spawn(live.clone())
                .map_err(|e| thread_error("metrics", e))?,
        );
    }
    Ok(OperatorSide {
        threads,
        control: control_at,
        metrics: metrics_at,
    })
}
