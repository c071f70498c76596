//! Preallocated I/O buffers of the NBD data path.
//!
//! The export may carry the filesystem the kernel is flushing: if serving
//! a write needed fresh memory, reclaim could wait on that very writeback
//! and the two would deadlock. So every byte of request payload and read
//! data lives in buffers allocated (and touched, so locked memory really
//! backs them) once, when the server is built, and reused:
//!
//! ```text
//!  BufPool (one per server, shared by its connections)
//!    small: SMALL_COUNT × SMALL_SIZE     requests ≤ SMALL_SIZE take one
//!    large: LARGE_COUNT × LARGE_SIZE     larger ones take ⌈len / LARGE_SIZE⌉ (a chain)
//!  acquire(len) ──waits (FIFO, all or nothing)──▶ IoBuf ──drop──▶ back to the pool
//! ```
//!
//! A request takes its buffers before its payload is read or its read is
//! started and gives them back only once its reply is written, so the pool
//! is also the flow control: a client that stops reading replies stops
//! being read. Acquisition is all-or-nothing per request (one semaphore
//! per class, `acquire_many`), so two requests can never each hold half of
//! what both need.
//!
//! Must not: allocate per request for payload bytes, or hand out more than
//! it holds.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::proto::MAX_PAYLOAD;

/// Buffer size of the small class: 4 KiB random I/O, nbdcopy's 256 KiB.
pub const SMALL_SIZE: usize = 256 << 10;
/// Buffers in the small class (the queue depth of small requests).
pub const SMALL_COUNT: usize = 128;
/// Buffer size of the large class: one replication record (1 MiB).
pub const LARGE_SIZE: usize = 1 << 20;
/// Buffers in the large class: one maximal request ([`MAX_PAYLOAD`], 32
/// MiB) fits, so no request waits for buffers that cannot exist.
pub const LARGE_COUNT: usize = MAX_PAYLOAD as usize / LARGE_SIZE;

/// Sizes of a pool: `(buffer size, count)` of the small and the large class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Small buffers: bytes each, and how many.
    pub small: (usize, usize),
    /// Large buffers: bytes each, and how many.
    pub large: (usize, usize),
}

impl Default for PoolSize {
    /// 32 MiB of small and 32 MiB of large buffers (64 MiB, what one
    /// connection's budget was before, now allocated once).
    fn default() -> Self {
        PoolSize { small: (SMALL_SIZE, SMALL_COUNT), large: (LARGE_SIZE, LARGE_COUNT) }
    }
}

impl PoolSize {
    /// A pool of about `bytes`: half in small buffers, half in large ones
    /// (at least one of each), so the largest request it serves is half the
    /// budget (the NBD server advertises that as the maximum payload).
    pub fn from_budget(bytes: usize) -> PoolSize {
        let half = bytes / 2;
        PoolSize {
            small: (SMALL_SIZE, (half / SMALL_SIZE).clamp(1, SMALL_COUNT)),
            large: (LARGE_SIZE, (half / LARGE_SIZE).clamp(1, LARGE_COUNT)),
        }
    }

    /// Bytes the pool holds.
    pub fn bytes(&self) -> usize {
        self.small.0 * self.small.1 + self.large.0 * self.large.1
    }

    /// The largest request the pool can ever serve.
    pub fn max_request(&self) -> usize {
        self.small.0.max(self.large.0 * self.large.1)
    }
}

#[derive(Debug)]
struct Class {
    size: usize,
    /// Buffers the class was built with (fixed).
    count: usize,
    free: Mutex<Vec<Vec<u8>>>,
    permits: Arc<Semaphore>,
}

impl Class {
    fn new(size: usize, count: usize) -> Class {
        let size = size.max(1);
        let free = (0..count).map(|_| touched(size)).collect();
        Class { size, count, free: Mutex::new(free), permits: Arc::new(Semaphore::new(count)) }
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        match self.free.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// A zeroed buffer whose every page has been written, so it is backed by
/// memory now (and locked, under `mlockall(MCL_FUTURE)`), not on first use.
fn touched(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    for i in (0..size).step_by(4096) {
        // SAFETY: i < size = v.len(); a volatile write so the store is not
        // elided on memory the allocator returned already zeroed.
        unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 0) };
    }
    v
}

/// Why buffers could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// More than the pool could ever hold (requests are checked against
    /// [`MAX_PAYLOAD`] first, which the default pool holds).
    #[error("a request of {len} bytes exceeds the pool's largest ({max})")]
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// Most the pool serves.
        max: usize,
    },
    /// The pool's semaphore was closed (never, while the pool lives).
    #[error("buffer pool closed")]
    Closed,
}

/// The buffers of one server, allocated when it is built.
#[derive(Debug)]
pub struct BufPool {
    classes: [Class; 2],
}

impl BufPool {
    /// Allocates and touches every buffer now.
    pub fn new(size: PoolSize) -> Arc<BufPool> {
        Arc::new(BufPool { classes: [Class::new(size.small.0, size.small.1), Class::new(size.large.0, size.large.1)] })
    }

    /// The largest request this pool can serve.
    pub fn max_request(&self) -> usize {
        let [small, large] = &self.classes;
        let s = if small.count > 0 { small.size } else { 0 };
        s.max(large.size * large.count)
    }

    /// Buffers for `len` bytes, waiting (first come, first served) until
    /// they are free. `len` 0 takes nothing.
    pub async fn acquire(self: &Arc<Self>, len: usize) -> Result<IoBuf, PoolError> {
        if len == 0 {
            return Ok(IoBuf { bufs: Vec::new(), len: 0, class: 0, pool: Arc::clone(self), _permit: None });
        }
        let (class, n) = self.plan(len)?;
        let c = &self.classes[class];
        let n32 = u32::try_from(n).map_err(|_| PoolError::TooLarge { len, max: self.max_request() })?;
        let permit = Arc::clone(&c.permits).acquire_many_owned(n32).await.map_err(|_| PoolError::Closed)?;
        let bufs = {
            let mut free = c.free_list();
            let at = free.len().saturating_sub(n);
            free.split_off(at)
        };
        // The permits guarantee the buffers; a shortfall would be a bug,
        // refused rather than served short.
        if bufs.len() != n {
            c.free_list().extend(bufs);
            return Err(PoolError::Closed);
        }
        Ok(IoBuf { bufs, len, class, pool: Arc::clone(self), _permit: Some(permit) })
    }

    /// Which class serves `len`, and how many of its buffers.
    fn plan(&self, len: usize) -> Result<(usize, usize), PoolError> {
        let [small, large] = &self.classes;
        if len <= small.size && small.count > 0 {
            return Ok((0, 1));
        }
        let n = len.div_ceil(large.size);
        if n > large.count {
            return Err(PoolError::TooLarge { len, max: self.max_request() });
        }
        Ok((1, n))
    }
}

/// `len` bytes of I/O buffer from a [`BufPool`]: one buffer or a chain of
/// large ones. Returned to the pool when dropped.
#[derive(Debug)]
pub struct IoBuf {
    bufs: Vec<Vec<u8>>,
    len: usize,
    class: usize,
    pool: Arc<BufPool>,
    // Dropped after `Drop::drop` put the buffers back (fields drop after
    // the body), so a waiter woken by the permit finds them.
    _permit: Option<OwnedSemaphorePermit>,
}

impl IoBuf {
    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, as consecutive slices (each at most one buffer long).
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let mut left = self.len;
        self.bufs.iter().map(move |b| {
            let n = left.min(b.len());
            left -= n;
            b.get(..n).unwrap_or_default()
        })
    }

    /// The same, writable.
    pub fn chunks_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        let mut left = self.len;
        self.bufs.iter_mut().map(move |b| {
            let n = left.min(b.len());
            left -= n;
            b.get_mut(..n).unwrap_or_default()
        })
    }

    /// Sets every byte to zero.
    pub fn zero(&mut self) {
        self.chunks_mut().for_each(|c| c.fill(0));
    }

    /// Copies the bytes out (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks().flatten().copied().collect()
    }

    /// Copies `data` in; `data.len()` must equal `len()` (tests and fakes).
    pub fn copy_from(&mut self, mut data: &[u8]) {
        for c in self.chunks_mut() {
            let n = c.len().min(data.len());
            c[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
        }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if self.bufs.is_empty() {
            return;
        }
        if let Some(c) = self.pool.classes.get(self.class) {
            c.free_list().append(&mut self.bufs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_pool() -> Arc<BufPool> {
        BufPool::new(PoolSize { small: (8192, 2), large: (16384, 3) })
    }

    #[test]
    fn a_budget_splits_in_half_and_bounds_the_largest_request() {
        let p = PoolSize::from_budget(8 << 20);
        assert_eq!(p, PoolSize { small: (SMALL_SIZE, 16), large: (LARGE_SIZE, 4) });
        assert_eq!((p.bytes(), p.max_request()), (8 << 20, 4 << 20));
        // Never less than one buffer of each class, never more than the default.
        assert_eq!(PoolSize::from_budget(0).bytes(), SMALL_SIZE + LARGE_SIZE);
        assert_eq!(PoolSize::from_budget(1 << 40), PoolSize::default());
    }

    #[tokio::test]
    async fn classes_chains_and_return() -> Result<(), PoolError> {
        let p = small_pool();
        assert_eq!(p.max_request(), 3 * 16384);
        let a = p.acquire(4096).await?;
        assert_eq!((a.len(), a.chunks().count()), (4096, 1));
        let mut b = p.acquire(40000).await?;
        assert_eq!(b.chunks().map(<[u8]>::len).collect::<Vec<_>>(), vec![16384, 16384, 40000 - 32768]);
        let data: Vec<u8> = (0..40000u32).map(|i| i as u8).collect();
        b.copy_from(&data);
        assert_eq!(b.to_vec(), data);
        assert!(matches!(p.acquire(3 * 16384 + 1).await, Err(PoolError::TooLarge { .. })));
        // All large buffers are out: the next large request waits until b returns.
        let p2 = Arc::clone(&p);
        let waiter = tokio::spawn(async move { p2.acquire(20000).await.map(|b| b.len()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        assert_eq!(waiter.await.expect("join")?, 20000);
        // Both small ones, then a third waits for one to come back.
        let c = p.acquire(8192).await?;
        drop(a);
        let d = p.acquire(1).await?;
        assert_eq!(d.len(), 1);
        drop((c, d));
        assert_eq!(p.acquire(0).await?.chunks().count(), 0);
        Ok(())
    }
}
