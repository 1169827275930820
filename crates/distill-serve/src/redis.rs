//! A minimal Redis client (RESP2: GET and SET PX) — all the shared cache needs, without
//! pulling a full client library into every build.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

pub struct RedisConn {
    stream: BufStream<TcpStream>,
}

impl RedisConn {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut conn = Self {
            stream: BufStream::new(stream),
        };
        match conn.command(&[b"PING"]).await? {
            Reply::Simple(s) if s == "PONG" => Ok(conn),
            other => Err(format!("unexpected PING reply {other:?}")),
        }
    }

    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.command(&[b"GET", key.as_bytes()]).await? {
            Reply::Bulk(v) => Ok(v),
            other => Err(format!("unexpected GET reply {other:?}")),
        }
    }

    pub async fn set_px(&mut self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), String> {
        let ttl = ttl_ms.to_string();
        match self
            .command(&[b"SET", key.as_bytes(), value, b"PX", ttl.as_bytes()])
            .await?
        {
            Reply::Simple(_) => Ok(()),
            other => Err(format!("unexpected SET reply {other:?}")),
        }
    }

    async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        let io = |e: std::io::Error| e.to_string();
        self.stream.write_all(&buf).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let mut line = String::new();
        if self.stream.read_line(&mut line).await.map_err(io)? == 0 {
            return Err("connection closed".into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Err(format!("Redis error: {rest}")),
            ":" => Ok(Reply::Int(rest.parse().map_err(|_| "bad integer reply")?)),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| "bad bulk length")?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut data = vec![0u8; n as usize + 2];
                self.stream.read_exact(&mut data).await.map_err(io)?;
                data.truncate(n as usize);
                Ok(Reply::Bulk(Some(data)))
            }
            _ => Err(format!("unsupported reply `{line}`")),
        }
    }
}

#[derive(Debug)]
enum Reply {
    Simple(String),
    #[allow(dead_code)]
    Int(i64),
    Bulk(Option<Vec<u8>>),
}
