//! Row 6 under criterion alone: one agent's effective decision over 1,000 generated policies.
//! `cargo xtask bench --only policy-eval` runs the same measurement and adds a p99 from the
//! time of every evaluation (docs/benchmarks.md).

use std::hint::black_box;

use agentd_bench::policy_set::Fixture;
use criterion::{Criterion, criterion_group, criterion_main};

fn policy_eval(c: &mut Criterion) {
    let fixture = Fixture::new(1_000, 8);
    let mut n = 0usize;
    c.bench_function("policy-eval/1000-policies", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(fixture.decide(black_box(n)))
        });
    });
}

criterion_group!(benches, policy_eval);
criterion_main!(benches);
