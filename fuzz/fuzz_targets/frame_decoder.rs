//! The frame decoder on arbitrary bytes, read as either direction's messages: every input
//! ends in frames or an error, never a panic, and no allocation exceeds the frame bounds.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use protocol::codec::FrameReader;
use protocol::wire::{FromSink, ToSink};

fuzz_target!(|data: &[u8]| {
    let mut r = FrameReader::new(Cursor::new(data));
    while let Ok(Some(_)) = r.frame::<ToSink>() {}
    let mut r = FrameReader::new(Cursor::new(data));
    while let Ok(Some(_)) = r.frame::<FromSink>() {}
});
