//! Deterministic parallel gzip: the input is cut into fixed-size chunks, each
//! deflated on its own thread (primed with the previous chunk's last 32 KiB),
//! and the raw deflate streams are joined into one gzip member, as pigz does.
//! The output depends only on the input, the chunk size and the level, never
//! on the number of threads or their timing.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Pinned: layer digests depend on it.
pub const LEVEL: u32 = 6;
/// Pinned: layer digests depend on it.
pub const CHUNK: usize = 1 << 20;
const DICTIONARY: usize = 32 * 1024;

/// gzip header: no name, mtime 0, no extra flags, OS "unknown".
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

struct Job {
    input: Vec<u8>,
    dictionary: Vec<u8>,
    last: bool,
    result: SyncSender<io::Result<Vec<u8>>>,
}

pub struct ParallelGzip<W: Write> {
    inner: Option<W>,
    buffer: Vec<u8>,
    crc: Crc,
    previous_tail: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    workers: Vec<JoinHandle<()>>,
    max_pending: usize,
    header_written: bool,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(inner: W) -> Self {
        let threads = std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(1)
            .min(8);
        let (jobs, queue) = sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..threads)
            .map(|_| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    loop {
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let out = deflate(&job.input, &job.dictionary, job.last);
                        let _ = job.result.send(out);
                    }
                })
            })
            .collect();
        Self {
            inner: Some(inner),
            buffer: Vec::with_capacity(CHUNK),
            crc: Crc::new(),
            previous_tail: Vec::new(),
            jobs: Some(jobs),
            pending: VecDeque::new(),
            workers,
            max_pending: threads * 2,
            header_written: false,
        }
    }

    fn inner(&mut self) -> &mut W {
        self.inner.as_mut().expect("used after finish")
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        if !self.header_written {
            self.inner().write_all(&HEADER)?;
            self.header_written = true;
        }
        let input = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        let tail_start = input.len().saturating_sub(DICTIONARY);
        let dictionary = std::mem::replace(&mut self.previous_tail, input[tail_start..].to_vec());
        let (result, receiver) = sync_channel(1);
        let job = Job {
            input,
            dictionary,
            last,
            result,
        };
        self.jobs
            .as_ref()
            .expect("used after finish")
            .send(job)
            .map_err(|_| io::Error::other("gzip worker stopped"))?;
        self.pending.push_back(receiver);
        while self.pending.len() >= self.max_pending || (last && !self.pending.is_empty()) {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        if let Some(receiver) = self.pending.pop_front() {
            let out = receiver
                .recv()
                .map_err(|_| io::Error::other("gzip worker stopped"))??;
            self.inner().write_all(&out)?;
        }
        Ok(())
    }

    /// Writes the last block and the trailer; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        let trailer_crc = self.crc.sum().to_le_bytes();
        let trailer_len = self.crc.amount().to_le_bytes();
        let inner = self.inner();
        inner.write_all(&trailer_crc)?;
        inner.write_all(&trailer_len)?;
        inner.flush()?;
        Ok(self.inner.take().expect("finish runs once"))
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = room.min(buf.len());
        self.buffer.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        if self.buffer.len() == CHUNK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        self.jobs.take();
        self.pending.clear();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// One chunk as raw deflate: byte-aligned with a sync flush, or the final block.
fn deflate(input: &[u8], dictionary: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut compress = Compress::new(Compression::new(LEVEL), false);
    if !dictionary.is_empty() {
        compress
            .set_dictionary(dictionary)
            .map_err(io::Error::other)?;
    }
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = compress.total_in() as usize;
        if out.capacity() - out.len() < 64 * 1024 {
            out.reserve(64 * 1024);
        }
        let status = compress
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done_input = compress.total_in() as usize == input.len();
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once all input is in and output had room left.
            Status::Ok | Status::BufError if !last && done_input && out.len() < out.capacity() => {
                break;
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = ParallelGzip::new(Vec::new());
        for piece in data.chunks(7919) {
            gz.write_all(piece).unwrap();
        }
        gz.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491u32;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                // Half text-like, half noise: both paths of the compressor.
                if (i / 4096) % 2 == 0 {
                    b"slimforge layer "[i % 16]
                } else {
                    state as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_as_one_gzip_member() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345] {
            let data = sample(len);
            let compressed = gzip(&data);
            // GzDecoder reads only the first member: one member must hold it all.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&compressed[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "length {len}");
        }
    }

    #[test]
    fn output_is_identical_across_runs() {
        let data = sample(5 * CHUNK + 77);
        assert_eq!(gzip(&data), gzip(&data));
    }
}
