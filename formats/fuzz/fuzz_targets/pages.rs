//! Fuzzes the pages stream decoder: raw bytes, or (first byte odd) bytes
//! framed as one page chunk with valid checksums so that zstd and the chunk
//! index parser see them. See `cr_formats_fuzz::pages`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cr_formats_fuzz::pages(data));
