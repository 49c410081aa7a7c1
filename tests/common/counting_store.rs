//! An `ObjectStore` wrapper that counts what a client really sent: the bytes and the objects of
//! every `put` it passes on, lock objects aside. Shared by `tests/archive.rs` and
//! `benches/archive.rs` (each includes this file by `#[path]`), so the targets the tests assert
//! and the figures the bench prints are counted the same way, outside the archive's own report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use object_store::{ObjectStore, PutPayload};

#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    put_bytes: AtomicU64,
    puts: AtomicU64,
    /// Refuse writes of lock objects, as a store refusing a client's requests would.
    pub refuse_locks: AtomicBool,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        CountingStore {
            inner,
            put_bytes: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            refuse_locks: AtomicBool::new(false),
        }
    }

    /// Bytes received in `put`s so far (lock objects aside), from every client.
    pub fn put_bytes(&self) -> u64 {
        self.put_bytes.load(Ordering::SeqCst)
    }

    /// Objects received in `put`s so far (lock objects aside).
    #[allow(dead_code)] // The bench reads it; the tests count bytes only.
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let is_lock =
            location.as_ref().contains("/locks/") || location.as_ref().starts_with("locks/");
        if is_lock && self.refuse_locks.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "test",
                source: "lock writes refused".into(),
            });
        }
        // Lock objects are not data: a few bytes whose size depends on the host.
        if !is_lock {
            self.put_bytes
                .fetch_add(payload.content_length() as u64, Ordering::SeqCst);
            self.puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        // Not counted: the archive never uploads in parts; fail loudly if it starts to.
        let _ = (location, opts);
        unimplemented!("the archive uses single puts")
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &object_store::path::Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
