//! The agent's sink (`mtr-agent serve`) fed a valid `Hello` for a fresh temp root, then
//! arbitrary bytes as everything else the source says. Whatever happens, nothing is written
//! outside the root (checked after every run) and the session ends in `Ok` or an error.
#![no_main]

use std::io::{self, Cursor};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use protocol::chunker::Chunker;
use protocol::codec::FrameWriter;
use protocol::wire::{ToSink, PROTOCOL_VERSION};

const VERSION: &str = "fuzz";

fuzz_target!(|data: &[u8]| {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut input = Vec::with_capacity(data.len() + 128);
    {
        let mut w = FrameWriter::new(&mut input);
        w.msg(&ToSink::Hello {
            protocol: PROTOCOL_VERSION,
            version: VERSION.into(),
            root: root.to_str().unwrap().into(),
            chunker: Chunker::default().id(),
        })
        .unwrap();
        w.flush().unwrap();
    }
    input.extend_from_slice(data);
    let _ = protocol::sink::serve(Cursor::new(input), io::sink(), VERSION);
    assert_only_root(outer.path());
});

/// `outer` holds nothing but `root`: the sink wrote nowhere else.
fn assert_only_root(outer: &Path) {
    for e in std::fs::read_dir(outer).unwrap() {
        let name = e.unwrap().file_name();
        assert_eq!(name, "root", "the sink wrote outside its root: {name:?}");
    }
}
