//! Fuzzes the disk format's decoders: a delta file (raw, or with valid
//! checksums laid over it) and a chain manifest. See `cr_formats_fuzz::disk`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cr_formats_fuzz::disk(data));
