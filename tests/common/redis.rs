//! A minimal RESP (redis protocol) client over one TCP connection, for the
//! workload and migration tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A minimal RESP client over one TCP connection.
pub struct Redis {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

impl Redis {
    pub fn connect(addr: &str) -> std::io::Result<Redis> {
        let stream = TcpStream::connect_timeout(
            &format!("{addr}:6379").parse().expect("address"),
            Duration::from_secs(2),
        )?;
        Redis::from_stream(stream)
    }

    /// A client on a connection made elsewhere (another namespace).
    pub fn from_stream(stream: TcpStream) -> std::io::Result<Redis> {
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Redis {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    pub fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).expect("writing to redis");
    }

    pub fn reply(&mut self) -> Reply {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("reading from redis");
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "+" => Reply::Status(rest.to_string()),
            ":" => Reply::Int(rest.parse().expect("integer reply")),
            "$" => {
                let n: i64 = rest.parse().expect("bulk length");
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut data = vec![0; n as usize + 2];
                std::io::Read::read_exact(&mut self.reader, &mut data).expect("bulk data");
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
            _ => panic!("redis replied {line:?}"),
        }
    }

    pub fn cmd(&mut self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&args);
        self.reply()
    }

    pub fn get(&mut self, key: &str) -> Option<String> {
        match self.cmd(&["GET", key]) {
            Reply::Bulk(v) => v.map(|v| String::from_utf8(v).expect("utf-8 value")),
            other => panic!("GET {key}: {other:?}"),
        }
    }
}
