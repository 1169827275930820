//! The answer cache: repeated inputs (after normalisation) skip the model and, more importantly,
//! the teacher. In-process by default; Redis when several replicas should share what they paid for.
//! Entries are JSON, so served students' labels and the gateway's whole upstream answers share
//! one cache, one key scheme and one failure policy (a cache that fails never fails a request).

use redis::aio::MultiplexedConnection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a cache entry remembers: the final answer and where it originally came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub label: String,
    pub confidence: f32,
    /// `student` or `teacher`.
    pub origin: String,
}

/// Trim, collapse runs of whitespace, and lower-case when the task is case-insensitive.
pub fn normalise(text: &str, case_insensitive: bool) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if case_insensitive {
        collapsed.to_lowercase()
    } else {
        collapsed
    }
}

/// Cache key: per served model, over the normalised input.
pub fn cache_key(model: &str, normalised: &str) -> String {
    let mut bytes = Vec::with_capacity(model.len() + normalised.len() + 1);
    bytes.extend_from_slice(model.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(normalised.as_bytes());
    format!("distill:v1:{}", distill_core::fsutil::sha256_hex(&bytes))
}

pub enum Cache {
    Off,
    Memory(MemoryCache),
    Redis(Box<RedisCache>),
}

impl Cache {
    /// The entry under `key`; `None` when absent, expired, unreadable or the backend is away.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let json = match self {
            Cache::Off => return None,
            Cache::Memory(m) => m.get(key)?,
            Cache::Redis(r) => r.get(key).await?,
        };
        serde_json::from_str(&json).ok()
    }
    /// Stores `value` for `ttl` (the cache's own TTL when `None`).
    pub async fn put<T: Serialize>(&self, key: &str, value: &T, ttl: Option<Duration>) {
        if matches!(self, Cache::Off) {
            return;
        }
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        match self {
            Cache::Off => {}
            Cache::Memory(m) => m.put(key, json, ttl),
            Cache::Redis(r) => r.put(key, json, ttl).await,
        }
    }
    pub fn is_on(&self) -> bool {
        !matches!(self, Cache::Off)
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Cache::Off => "off",
            Cache::Memory(_) => "memory",
            Cache::Redis(_) => "redis",
        }
    }
    /// Operations that failed because the backend was unreachable (Redis only).
    pub fn errors(&self) -> u64 {
        match self {
            Cache::Redis(r) => r.errors.load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

const SHARDS: usize = 16;

/// A sharded map with per-entry expiry and a size bound, so hot paths rarely contend.
pub struct MemoryCache {
    shards: Vec<Mutex<HashMap<String, (Instant, String)>>>,
    ttl: Duration,
    max_per_shard: usize,
}

impl MemoryCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ttl,
            max_per_shard: (max_entries / SHARDS).max(1),
        }
    }
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, (Instant, String)>> {
        let h = key
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
        &self.shards[h % SHARDS]
    }
    pub fn get(&self, key: &str) -> Option<String> {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((exp, v)) if *exp > Instant::now() => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }
    pub fn put(&self, key: &str, value: String, ttl: Option<Duration>) {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_per_shard {
            let now = Instant::now();
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= self.max_per_shard {
                // Still full of live entries: drop an arbitrary one rather than grow without bound.
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            key.to_string(),
            (Instant::now() + ttl.unwrap_or(self.ttl), value),
        );
    }
}

/// A Redis-backed cache over one multiplexed connection (requests are pipelined on it, none waits
/// for another's round trip). Redis going away never fails a request: the operation is skipped, a
/// warning is logged once, and reconnection is retried at most once a second.
pub struct RedisCache {
    client: redis::Client,
    addr: String,
    ttl: Duration,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    last_attempt: Mutex<Option<Instant>>,
    warned: AtomicBool,
    pub errors: AtomicU64,
    op_timeout: Duration,
}

impl RedisCache {
    /// `url` is `redis://host[:port][/db]`.
    pub fn new(url: &str, ttl: Duration) -> Result<Self, crate::ServeError> {
        let bad = |why: String| crate::ServeError::config("--cache", why);
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| bad(format!("`{url}` is not memory, off or redis://host:port")))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        if hostport.contains('@') {
            // Secrets come from the environment only; a URL ends up in logs and shell history.
            return Err(bad(
                "Redis credentials in the URL are not supported; bind Redis to a private interface"
                    .into(),
            ));
        }
        let client = redis::Client::open(url)
            .map_err(|e| bad(format!("`{url}` is not a Redis URL: {e}")))?;
        let addr = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        Ok(Self {
            client,
            addr,
            ttl,
            conn: tokio::sync::Mutex::new(None),
            last_attempt: Mutex::new(None),
            warned: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            op_timeout: Duration::from_millis(250),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connects now, so a wrong address is reported at start-up rather than silently ignored.
    pub async fn check(&self) -> Result<(), String> {
        let mut conn = self.connect().await?;
        let pong: String =
            tokio::time::timeout(self.op_timeout, redis::cmd("PING").query_async(&mut conn))
                .await
                .map_err(|_| "PING timed out".to_string())?
                .map_err(|e| e.to_string())?;
        if pong != "PONG" {
            return Err(format!("unexpected PING reply {pong:?}"));
        }
        *self.conn.lock().await = Some(conn);
        Ok(())
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        tokio::time::timeout(
            self.op_timeout,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())
    }

    fn failed(&self, why: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "Redis cache at {} is unavailable ({why}); answering uncached until it is back",
                self.addr
            );
        }
    }

    /// The shared connection, (re)connecting at most once a second while Redis is away.
    async fn connection(&self) -> Option<MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Some(c.clone());
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match self.connect().await {
            Ok(c) => {
                if self.warned.swap(false, Ordering::Relaxed) {
                    tracing::warn!("Redis cache at {} is back", self.addr);
                }
                *guard = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.connection().await?;
        let why = match tokio::time::timeout(self.op_timeout, cmd.query_async::<T>(&mut conn)).await
        {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        // A broken connection is dropped so the next operation reconnects.
        *self.conn.lock().await = None;
        self.failed(&why);
        None
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let bytes: Vec<u8> = self.run::<Option<Vec<u8>>>(cmd).await??;
        String::from_utf8(bytes).ok()
    }

    pub async fn put(&self, key: &str, json: String, ttl: Option<Duration>) {
        let ttl = ttl.unwrap_or(self.ttl);
        let ttl_ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(json).arg("PX").arg(ttl_ms);
        self.run::<()>(cmd).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_whitespace_and_case() {
        assert_eq!(
            normalise("  Where IS\n\tmy  card ", false),
            "Where IS my card"
        );
        assert_eq!(
            normalise("  Where IS\n\tmy  card ", true),
            "where is my card"
        );
        assert_ne!(cache_key("a", "x"), cache_key("b", "x"));
    }

    #[test]
    fn redis_urls_are_checked_and_credentials_refused() {
        let ttl = Duration::from_secs(1);
        assert_eq!(
            RedisCache::new("redis://cache", ttl).unwrap().addr(),
            "cache:6379"
        );
        assert_eq!(
            RedisCache::new("redis://10.0.0.2:7000/3", ttl)
                .unwrap()
                .addr(),
            "10.0.0.2:7000"
        );
        let err = |url: &str| RedisCache::new(url, ttl).err().unwrap().to_string();
        let e = err("redis://user:hunter2@cache:6379");
        assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
        assert!(err("http://cache:6379").contains("redis://host:port"));
        assert!(err("redis://cache:notaport").contains("--cache"));
    }

    #[test]
    fn memory_cache_expires_and_stays_bounded() {
        let c = MemoryCache::new(Duration::from_secs(60), 32);
        let v = "{\"label\":\"l\"}".to_string();
        c.put("k", v.clone(), None);
        assert_eq!(c.get("k"), Some(v.clone()));
        for i in 0..1000 {
            c.put(&format!("k{i}"), v.clone(), None);
        }
        let total: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32, "{total}");
        let expired = MemoryCache::new(Duration::ZERO, 32);
        expired.put("k", v.clone(), None);
        assert_eq!(expired.get("k"), None);
        // A per-entry TTL overrides the cache's own.
        let long = MemoryCache::new(Duration::from_secs(60), 32);
        long.put("k", v, Some(Duration::ZERO));
        assert_eq!(long.get("k"), None);
    }
}
