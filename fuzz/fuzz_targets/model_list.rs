//! Fuzz target: `provgate::fuzzing::model_list` (its doc says what the input is).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    provgate::fuzzing::model_list(data);
});
