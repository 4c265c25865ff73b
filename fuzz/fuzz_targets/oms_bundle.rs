//! Fuzz target: `provgate::fuzzing::oms_bundle` (its doc says what the input is).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    provgate::fuzzing::oms_bundle(data);
});
