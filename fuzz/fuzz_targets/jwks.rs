//! Fuzz target: `provgate::fuzzing::jwks` (its doc says what the input is).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    provgate::fuzzing::jwks(data);
});
