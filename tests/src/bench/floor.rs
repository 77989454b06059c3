//! The crypto and hashing floor: the CPU a proxy cannot avoid per GiB of blocks it
//! forwards, timed on one core in the same run as the figures it is compared with.
//! Each block arrives encrypted on the backend's connection (decrypt), is checked
//! against its CID (SHA-256), and leaves encrypted on the client's (encrypt). Noise
//! uses ChaCha20-Poly1305 (through `ring`, as libp2p-noise does); TLS 1.3 would use
//! AES-128-GCM, timed as the alternative. The proxy as it runs mixes the two: noise to
//! most clients, TLS 1.3 with AES-128-GCM to kubo (`proxy/src/net/backend_tls.rs`).

use std::time::Duration;

use ring::aead::{AES_128_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};

/// A noise transport message carries at most 65,535 bytes, tag included.
const CHUNK: usize = 65_519;
/// A full-size bitswap block.
const BLOCK: usize = 256 * 1024;

/// CPU seconds per GiB on one core.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub chacha_both_ways: f64,
    pub aes_gcm_both_ways: f64,
    pub sha256: f64,
}

impl Floor {
    /// The floor with noise on both legs: the floor the goal is stated against.
    pub fn noise(&self) -> f64 {
        self.chacha_both_ways + self.sha256
    }

    /// The floor with TLS 1.3 (AES-128-GCM) on both legs.
    pub fn tls(&self) -> f64 {
        self.aes_gcm_both_ways + self.sha256
    }

    /// The floor as the bench's proxy runs: blocks decrypted with AES-128-GCM (TLS to
    /// kubo) and encrypted with ChaCha20-Poly1305 (noise to the client).
    pub fn as_run(&self) -> f64 {
        (self.aes_gcm_both_ways + self.chacha_both_ways) / 2.0 + self.sha256
    }

    /// The mean of samples taken across a run, part by part: the CPU figures it is
    /// compared with are totals over the same run, so the machine's pace (shared, it
    /// drifts within minutes) weighs on both alike.
    pub fn mean(samples: &[Floor]) -> Floor {
        let n = samples.len().max(1) as f64;
        let sum = |part: fn(&Floor) -> f64| samples.iter().map(part).sum::<f64>() / n;
        Floor {
            chacha_both_ways: sum(|f| f.chacha_both_ways),
            aes_gcm_both_ways: sum(|f| f.aes_gcm_both_ways),
            sha256: sum(|f| f.sha256),
        }
    }
}

/// One of `runs` samples spread between a section's runs, together timed over about
/// `total_mib` MiB.
pub fn sample(total_mib: usize, runs: usize) -> Floor {
    measure((total_mib / runs.max(1)).max(8))
}

/// Measures each part over `mib` MiB (at least a few hundred for a stable figure).
fn measure(mib: usize) -> Floor {
    let bytes = mib << 20;
    let per_gib = |cpu: Duration| cpu.as_secs_f64() * (1u64 << 30) as f64 / bytes as f64;
    let data: Vec<u8> = (0..BLOCK).map(|i| (i * 31 % 251) as u8).collect();
    Floor {
        chacha_both_ways: per_gib(seal_and_open(&CHACHA20_POLY1305, &data, bytes)),
        aes_gcm_both_ways: per_gib(seal_and_open(&AES_128_GCM, &data, bytes)),
        sha256: per_gib(thread_cpu(|| {
            let mut done = 0;
            while done < bytes {
                std::hint::black_box(digest(&SHA256, &data));
                done += data.len();
            }
        })),
    }
}

/// Encrypts then decrypts `bytes` in noise-sized chunks: one leg in, one leg out.
fn seal_and_open(alg: &'static Algorithm, block: &[u8], bytes: usize) -> Duration {
    let key_bytes = vec![7u8; alg.key_len()];
    let key = LessSafeKey::new(UnboundKey::new(alg, &key_bytes).expect("key length"));
    let mut buf = Vec::with_capacity(CHUNK + alg.tag_len());
    let mut counter = 0u64;
    thread_cpu(|| {
        let mut done = 0;
        while done < bytes {
            for chunk in block.chunks(CHUNK) {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_le_bytes());
                buf.clear();
                buf.extend_from_slice(chunk);
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .expect("seal");
                let plain = key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
                    .expect("what was sealed opens");
                std::hint::black_box(plain);
            }
            done += block.len();
        }
    })
}

/// The CPU time this thread spent in `f` (not wall time: the machine is shared).
fn thread_cpu(f: impl FnOnce()) -> Duration {
    let now = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the struct passed.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let start = now();
    f();
    now().saturating_sub(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_costs_something_and_the_sum_is_the_floor() {
        let f = measure(8);
        for part in [f.chacha_both_ways, f.aes_gcm_both_ways, f.sha256] {
            assert!(part > 0.0 && part.is_finite(), "{f:?}");
        }
        assert!((f.noise() - (f.chacha_both_ways + f.sha256)).abs() < 1e-12);
        assert!(f.tls() > f.sha256 && f.noise() > f.sha256);
        let between = f.as_run();
        assert!(between > f.tls().min(f.noise()) && between < f.tls().max(f.noise()));
    }

    #[test]
    fn the_mean_of_samples_is_taken_part_by_part() {
        let a = Floor {
            chacha_both_ways: 1.0,
            aes_gcm_both_ways: 0.2,
            sha256: 0.6,
        };
        let b = Floor {
            chacha_both_ways: 3.0,
            aes_gcm_both_ways: 0.4,
            sha256: 1.0,
        };
        let m = Floor::mean(&[a, b]);
        assert_eq!(
            (m.chacha_both_ways, m.aes_gcm_both_ways, m.sha256),
            (2.0, 0.30000000000000004, 0.8)
        );
    }
}
