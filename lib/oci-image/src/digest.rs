//! sha256 digests: hashing readers and writers that check content against the digest it is
//! stored under.

use std::io::{Read, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, Result};

/// `sha256:<hex>` of `data`.
pub fn of(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// `sha256:<hex>` of what `h` was fed.
pub fn finish(h: Sha256) -> String {
    format!("sha256:{}", hex(&h.finalize()))
}

/// The hex part of a digest (the name its blob is stored under).
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes what passes through it.
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Starts from a hash state already fed with earlier bytes (a resumed download).
    pub fn resume(inner: T, hasher: Sha256, count: u64) -> Self {
        Hashing {
            inner,
            hasher,
            count,
        }
    }

    /// The digest and byte count of everything so far.
    pub fn finish(self) -> (String, u64, T) {
        (finish(self.hasher), self.count, self.inner)
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads `r` to its end and checks that everything read through `h` hashes to `expected`.
pub fn drain_and_check<R: Read>(mut h: Hashing<R>, expected: &str) -> Result<u64> {
    std::io::copy(&mut h, &mut std::io::sink())
        .map_err(|e| ImageError::io(format!("blob {expected}"), e))?;
    let (actual, n, _) = h.finish();
    if actual != expected {
        return Err(ImageError::Corrupt {
            digest: expected.to_string(),
            actual,
        });
    }
    Ok(n)
}

/// A fresh sha256 state fed with `r` (to resume hashing a partial download).
pub fn state_of(mut r: impl Read) -> std::io::Result<(Sha256, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((h, n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_and_corruption() {
        assert_eq!(
            of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let good = of(b"hello");
        assert_eq!(
            drain_and_check(Hashing::new(&b"hello"[..]), &good).ok(),
            Some(5)
        );
        assert!(matches!(
            drain_and_check(Hashing::new(&b"hellO"[..]), &good),
            Err(ImageError::Corrupt { .. })
        ));
    }

    #[test]
    fn resumed_hash_equals_whole_hash() {
        let (st, n) = state_of(&b"hel"[..]).expect("reading a slice");
        let mut h = Hashing::resume(std::io::sink(), st, n);
        h.write_all(b"lo").expect("writing to a sink");
        let (d, count, _) = h.finish();
        assert_eq!((d, count), (of(b"hello"), 5));
    }
}
