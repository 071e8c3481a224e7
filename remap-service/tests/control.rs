//! The control socket, in-process: a pair served by `serve()`, asked through the client
//! (`control::call_as`) and over a raw socket. Requests change the served device exactly as
//! they say; bad requests are answered without harm and the server stays up; a second
//! server cannot take a live socket. (`remap-cli/tests/control.rs` drives the same socket
//! through the `remap` commands.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use remap_core::{BlockBackend, HealthState};
use remap_service::blocks::BlockRange;
use remap_service::control::{self, ControlError, ControlServer, Request};
use remap_service::health::HealthView;
use remap_service::live::MapReply;
use remap_service::scrub::{ScrubState, ScrubStatus};
use remap_service::settings::{SavedSettings, SettingChanges};
use remap_service::status::LiveStatus;
use remap_service::{FaultPlan, ServeConfig};
use serde_json::Value;

const MAIN_SIZE: u64 = 16 << 20;
const SPARE_SIZE: u64 = 4 << 20;

/// Send raw lines, read one reply line per request.
fn raw(path: &std::path::Path, lines: &[&[u8]]) -> Vec<Value> {
    let stream = UnixStream::connect(path).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut w = &stream;
    let mut replies = Vec::new();
    for l in lines {
        w.write_all(l).expect("write");
        let mut reply = String::new();
        reader.read_line(&mut reply).expect("read reply");
        replies.push(serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}")));
    }
    replies
}

#[test]
fn requests_change_the_served_device_as_they_say() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    let ctl = f.path("ctl");
    let serving = f.serve(
        FaultPlan {
            fail_read: blocks(300, 300),
            ..FaultPlan::default()
        },
        ServeConfig {
            control: Some(ctl.clone()),
            ..ServeConfig::default()
        },
    );
    let mode = std::fs::metadata(&ctl)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only the owner may move blocks");
    let live = serving.live().clone();

    let status: LiveStatus = control::call_as(&ctl, &Request::Status {}).expect("status");
    assert_eq!(status.live.pid, std::process::id());
    assert_eq!(status.main_blocks, MAIN_SIZE / BS);
    assert_eq!((status.blocks.remapped, status.blocks.pending), (0, 0));

    // Map: blocks move, with their data, and the reply says where.
    live.device
        .write_at(11 * BS, &[0x5a; BS as usize])
        .expect("write");
    let reply: MapReply = control::call_as(
        &ctl,
        &Request::Map {
            blocks: vec![BlockRange {
                first: 10,
                last: 12,
            }],
            zero_unreadable: false,
            partial: false,
        },
    )
    .expect("map");
    assert_eq!((reply.moved, reply.failed, reply.requested), (3, 0, 3));
    assert!(reply.results.iter().all(|r| r.outcome == "mapped"));
    for lba in 10..=12 {
        assert!(live.device.entry(lba).is_some_and(|e| e.is_remapped()));
    }
    let mut buf = vec![0u8; BS as usize];
    live.device.read_at(11 * BS, &mut buf).expect("read");
    assert_eq!(
        buf,
        vec![0x5a; BS as usize],
        "the data moved with the block"
    );
    // Mapping them again changes nothing.
    let again: MapReply = control::call_as(
        &ctl,
        &Request::Map {
            blocks: vec![BlockRange {
                first: 10,
                last: 12,
            }],
            zero_unreadable: false,
            partial: false,
        },
    )
    .expect("map again");
    assert_eq!((again.moved, again.unchanged), (0, 3));

    // Set: saved and applied at once; an inconsistent change is refused and saves nothing.
    let saved: SavedSettings = control::call_as(
        &ctl,
        &Request::Set {
            changes: SettingChanges {
                pending_critical: Some(100),
                read_retries: Some(5),
                ..SettingChanges::default()
            },
        },
    )
    .expect("set");
    assert_eq!(saved.thresholds.pending_critical, 100);
    assert_eq!(live.device.settings().read_retries, 5);
    let refused = control::call(
        &ctl,
        &Request::Set {
            changes: SettingChanges {
                pending_degraded: Some(500),
                ..SettingChanges::default()
            },
        },
    );
    // Inverted thresholds are a usage error, as offline (issue 11).
    assert!(
        matches!(refused, Err(ControlError::UsageRefused { .. })),
        "{refused:?}"
    );
    assert_eq!(live.device.thresholds().pending_degraded, 1);

    // Scrub: runs in the background, finds the failing block, saves its pass.
    let started: ScrubStatus = control::call_as(
        &ctl,
        &Request::ScrubStart {
            rate_bytes_per_s: None,
        },
    )
    .expect("scrub");
    assert_eq!(started.state, ScrubState::Running);
    let done = wait_for(Duration::from_secs(60), "the scrub to finish", || {
        let s: ScrubStatus = control::call_as(&ctl, &Request::ScrubStatus {}).expect("status");
        (s.state == ScrubState::Finished).then_some(s)
    });
    assert_eq!(done.unreadable, vec![300]);
    assert_eq!((done.passes, done.saved_cursor), (1, 0));

    // Health: pending block 300 makes it degraded, and the reason says so.
    let health: HealthView = control::call_as(&ctl, &Request::Health {}).expect("health");
    assert_eq!(health.state, HealthState::Degraded);
    assert!(
        health
            .reasons
            .iter()
            .any(|r| r.message.contains("1 unreadable"))
    );
    assert_eq!(health.rates.windows.len(), 3);

    let summary = serving.stop().expect("stop");
    assert_eq!(summary.remapped, vec![10, 11, 12]);
    assert_eq!(summary.pending, vec![300]);
    assert!(!ctl.exists(), "the socket file is removed at the end");
}

#[test]
fn bad_requests_are_answered_and_the_server_stays_up() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    let ctl = f.path("ctl");
    let serving = f.serve(
        FaultPlan::default(),
        ServeConfig {
            control: Some(ctl.clone()),
            ..ServeConfig::default()
        },
    );
    let replies = raw(
        &ctl,
        &[
            b"not json\n",
            b"{\"cmd\":\"frobnicate\"}\n",
            b"{\"cmd\":\"status\",\"extra\":1}\n",
            b"{\"cmd\":\"map\",\"blocks\":[{\"first\":9,\"last\":1}]}\n",
            b"{\"cmd\":\"map\",\"blocks\":[{\"first\":0,\"last\":18446744073709551615}]}\n",
            b"{\"cmd\":\"map\",\"blocks\":[{\"first\":4096,\"last\":4096}]}\n",
            b"{\"cmd\":\"map\",\"blocks\":[]}\n",
            b"{\"cmd\":\"scrub-start\",\"rate_bytes_per_s\":0}\n",
            b"{\"cmd\":\"scrub-status\"}\n",
        ],
    );
    for r in &replies[..8] {
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    assert!(
        replies[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("frobnicate"))
    );
    assert!(
        replies[5]["error"]
            .as_str()
            .is_some_and(|e| e.contains("block 4096 is beyond the end")),
        "{}",
        replies[5]
    );
    assert_eq!(replies[8]["ok"], true, "the connection still answers");
    assert_eq!(replies[8]["result"]["state"], "idle");

    // A request over the limit is answered, then the connection is closed.
    let stream = UnixStream::connect(&ctl).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = (&stream).write_all(&vec![b'x'; control::MAX_REQUEST_BYTES + 1]);
    let mut reader = BufReader::new(&stream);
    let mut reply = String::new();
    reader.read_line(&mut reply).expect("reply");
    assert!(reply.contains("longer than 65536 bytes"), "{reply}");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after the refusal");

    // More connections than allowed: the extra one is told so; later ones work.
    let held: Vec<UnixStream> = (0..control::MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&ctl).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let extra = UnixStream::connect(&ctl).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut line = String::new();
    BufReader::new(&extra).read_line(&mut line).expect("reply");
    assert!(line.contains("too many control connections"), "{line}");
    drop(held);
    let ok = wait_for(Duration::from_secs(10), "a free connection slot", || {
        let r = raw(&ctl, &[b"{\"cmd\":\"status\"}\n"]);
        (r[0]["ok"] == true).then_some(r)
    });
    assert_eq!(ok[0]["result"]["blocks"]["remapped"], 0, "nothing changed");

    // A second server cannot take a live socket, nor a file that is not a socket; a client
    // of a missing socket gets a typed error naming it.
    assert!(matches!(
        ControlServer::bind(&ctl),
        Err(ControlError::InUse { .. })
    ));
    let not_socket = f.path("plain");
    std::fs::write(&not_socket, b"x").expect("file");
    assert!(matches!(
        ControlServer::bind(&not_socket),
        Err(ControlError::NotASocket { .. })
    ));
    let missing = f.path("nope");
    match control::call(&missing, &Request::Status {}) {
        Err(e @ ControlError::Connect { .. }) => {
            assert!(
                e.to_string().starts_with(&missing.display().to_string()),
                "{e}"
            )
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    serving.stop().expect("stop");
}
