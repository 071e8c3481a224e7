//! Embedding a served, scrubbed, monitored device in a program: format a pair of files,
//! serve it over NBD with two blocks that fail writes and two that fail reads, write through
//! the device, run a background scrub, read the health and the metrics, stop cleanly, and
//! print every figure that came back. Exits non-zero if a figure is not what the faults
//! imply.
//!
//!     cargo run --release -p remap-service --example embed

use std::error::Error;
use std::time::{Duration, Instant};

use remap_core::BlockBackend;
use remap_service::blocks::{BlockList, BlockRange};
use remap_service::scrub::ScrubState;
use remap_service::{Access, FaultPlan, ListenAddr, Pair, ServeConfig};

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let (main, spare) = (dir.path().join("main.img"), dir.path().join("spare.img"));
    std::fs::File::create(&main)?.set_len(64 << 20)?;
    std::fs::File::create(&spare)?.set_len(8 << 20)?;

    let pair = Pair::open(&main, &spare, Access::ReadWrite, Access::ReadWrite)?;
    let blocks = |first, last| BlockList::new(&[BlockRange { first, last }]);
    let serving = remap_service::serve(
        pair,
        ServeConfig {
            listen: vec![ListenAddr::Unix(dir.path().join("nbd.sock"))],
            faults: FaultPlan {
                fail_write: blocks(10, 11),
                fail_read: blocks(2000, 2001),
                ..FaultPlan::default()
            },
            metrics: Some("127.0.0.1:0".parse()?),
            create_if_blank: true,
            ..ServeConfig::default()
        },
    )?;
    println!("serving on {}", serving.local_addrs()[0]);

    // A write to a failing block moves it to the spare, durably, before it returns.
    let live = serving.live();
    live.device.write_at(10 * 4096, &[0xab; 2 * 4096])?;

    // A background scrub at 256 MiB/s finds the unreadable blocks before a client does.
    live.scrub_start(Some(256 << 20))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while live.scrub_status().state == ScrubState::Running && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let scrub = live.scrub_status();
    println!(
        "scrub: {:?}, {} bytes at {:.0} MiB/s, unreadable {:?}",
        scrub.state,
        scrub.bytes_read,
        scrub.bytes_per_s / 1048576.0,
        scrub.unreadable
    );
    let health = live.health();
    println!(
        "health: {}, {} reason(s)",
        health.state,
        health.reasons.len()
    );
    for r in &health.reasons {
        println!("  {}", r.message);
    }
    let metrics = remap_service::metrics::render(live)?;
    let pending = metrics
        .lines()
        .find(|l| l.starts_with("remap_pending_blocks "));
    println!(
        "metrics ({}): {}",
        serving.metrics_addr().ok_or("no metrics")?,
        pending.unwrap_or("?")
    );

    let summary = serving.stop()?;
    println!(
        "stopped: {} remaps this session, remapped {:?}, pending {:?}",
        summary.after.remaps - summary.before.remaps,
        summary.remapped,
        summary.pending
    );
    if scrub.state != ScrubState::Finished
        || scrub.unreadable != [2000, 2001]
        || summary.remapped != [10, 11]
        || summary.pending != [2000, 2001]
    {
        return Err("the figures do not match the injected faults".into());
    }
    Ok(())
}
