//! Tests of the adapter as a whole: hand-made streams for each case, and property tests that
//! decode the original and the filtered stream with an independent HPACK decoder.
