//! Throughput of the embedded ingest→detect path (placeholder replaced below).
fn main() {}
