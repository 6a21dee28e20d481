//! mtr's side of `--get` (the client as sink) reading arbitrary bytes as everything the agent
//! says. Whatever happens, nothing is written outside the download's parent directory (which
//! holds only the destination, its state dir and the hidden staging dir) and no panic.
#![no_main]

use std::io::{self, Cursor};

use libfuzzer_sys::fuzz_target;
use protocol::codec::{FrameReader, FrameWriter};
use protocol::get::{self, ReceiveConfig, Request};
use protocol::scan::NoProgress;

const VERSION: &str = "fuzz";

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().unwrap();
    let parent = outer.path().join("downloads");
    let mut r = FrameReader::new(Cursor::new(data));
    let mut w = FrameWriter::new(io::sink());
    let req = Request {
        path: "/remote".into(),
        name: "dl".into(),
        dry_run: false,
    };
    if get::request(&mut r, &mut w, &req, VERSION).is_ok() {
        let cfg = ReceiveConfig {
            dest: parent.join("dl"),
            state_dir: outer.path().join("state"),
            dry_run: false,
        };
        let _ = get::receive(&mut r, &mut w, &cfg, VERSION, &NoProgress, &mut |_| {});
    }
    for e in std::fs::read_dir(outer.path()).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            name == "downloads" || name == "state",
            "a download wrote outside its destination: {name:?}"
        );
    }
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for e in entries {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(
                name == "dl" || name.starts_with(".mtr-get-"),
                "a download wrote beside its destination: {name:?}"
            );
        }
    }
});
