//! CSR signings per second by the mesh CA's authority (parse, verify the CSR's signature, check
//! the identity, sign an ECDSA P-256 workload certificate), single-threaded.
//!
//! Run: `cargo bench -p isthmus-controlplane --bench ca_signing`

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isthmus_controlplane::ca::{Authority, CaMaterial, TtlPolicy};
use isthmus_identity::{SpiffeId, TrustDomain, generate_csr};

fn bench(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("red.local").unwrap();
    let material = CaMaterial::load_or_generate(state.path(), &td).unwrap();
    let authority = Authority::new(td, material, TtlPolicy::default()).unwrap();
    let id = SpiffeId::parse("spiffe://red.local/ns/app/sa/web").unwrap();
    let csrs: Vec<String> = (0..64)
        .map(|_| generate_csr(&id).unwrap().csr_pem)
        .collect();

    let mut group = c.benchmark_group("ca");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("sign_csr", |b| {
        b.iter(|| {
            i = (i + 1) % csrs.len();
            authority.sign(&csrs[i], &id, 0).unwrap()
        })
    });
    group.bench_function("generate_key_and_csr", |b| {
        b.iter(|| generate_csr(&id).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
