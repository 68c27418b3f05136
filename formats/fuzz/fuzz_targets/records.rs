//! Fuzzes the records stream decoder: raw bytes, or (first byte odd) bytes
//! framed as one record frame with valid checksums so that postcard and the
//! schema see them. See `cr_formats_fuzz::records`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cr_formats_fuzz::records(data));
