//! The peer transport: one outgoing gRPC stream per peer carrying batched Raft messages.
//!
//! The Ready loop hands messages to [`PeerTransport::send`], which queues them per peer and
//! never blocks. A task per peer keeps a `PeerService.Raft` client stream open (reconnecting
//! with backoff), batches what is queued into frames, and splits a message too large for one
//! frame (a snapshot) into ordered chunks. A full queue drops messages, which Raft retransmits;
//! a failed connection is reported to Raft as an unreachable peer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::peer_service_client::PeerServiceClient;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use super::node::{NodeHandle, Transport};

/// Largest frame sent or accepted on a peer stream.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Messages larger than this are sent as chunks.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Messages per frame at most.
const BATCH: usize = 256;
/// A connection attempt (handshake included) that has not answered after this long counts as
/// a broken link.
const CONNECT_STALL: Duration = Duration::from_secs(5);
/// A frame the stream has not taken after this long counts as a broken link: the sender
/// reconnects, and Raft resends what still matters. Generous, because the frame ahead of it
/// may be a 1 MiB snapshot chunk on a slow link (30 s allows 35 KiB/s); a dead peer is found
/// sooner by HTTP/2 keep-alive (3 s).
const FRAME_STALL: Duration = Duration::from_secs(30);

/// The loop's side: one queue per peer.
pub struct PeerTransport {
    /// Per peer: its queue, and the token that stops its sender task when it is removed.
    queues: BTreeMap<u64, (mpsc::Sender<Message>, CancellationToken)>,
    dropped: u64,
    links: Arc<Mutex<Links>>,
}

/// The network side, shared: where sender tasks are spawned, and queues waiting for it.
#[derive(Default)]
struct Links {
    spawner: Option<(tokio::runtime::Handle, u64, NodeHandle)>,
    waiting: Vec<(u64, String, mpsc::Receiver<Message>, CancellationToken)>,
}

impl Links {
    fn spawn(&mut self, id: u64, addr: String, rx: mpsc::Receiver<Message>, stop: CancellationToken) {
        match &self.spawner {
            Some((rt, from, node)) => {
                let task = peer_sender(*from, id, addr, rx, node.clone());
                rt.spawn(async move {
                    // A removed peer gets nothing more, not even what was queued for it.
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = task => {}
                    }
                });
            }
            None => self.waiting.push((id, addr, rx, stop)),
        }
    }
}

/// Starts the sender tasks once the node exists.
pub struct PeerLinks {
    links: Arc<Mutex<Links>>,
}

impl PeerTransport {
    /// Queues for `peers` (id -> gRPC address); nothing is sent until the links are started.
    pub fn new(peers: &BTreeMap<u64, String>) -> (PeerTransport, PeerLinks) {
        let links = Arc::new(Mutex::new(Links::default()));
        let mut t = PeerTransport { queues: BTreeMap::new(), dropped: 0, links: links.clone() };
        for (id, addr) in peers {
            t.set_peer(*id, Some(addr.clone()));
        }
        (t, PeerLinks { links })
    }
}

impl PeerLinks {
    /// Spawns the sender tasks on the current tokio runtime, now and for peers added later.
    pub fn start(self, from: u64, node: NodeHandle) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.spawner = Some((tokio::runtime::Handle::current(), from, node));
        for (id, addr, rx, stop) in std::mem::take(&mut links.waiting) {
            links.spawn(id, addr, rx, stop);
        }
    }
}

impl Transport for PeerTransport {
    fn set_peer(&mut self, id: u64, address: Option<String>) {
        match address {
            // Dropping the queue ends its sender task.
            None => {
                if let Some((_, stop)) = self.queues.remove(&id) {
                    stop.cancel();
                }
            }
            Some(addr) => {
                if self.queues.contains_key(&id) {
                    return;
                }
                let (tx, rx) = mpsc::channel(QUEUE);
                let stop = CancellationToken::new();
                self.queues.insert(id, (tx, stop.clone()));
                self.links.lock().unwrap_or_else(|e| e.into_inner()).spawn(id, addr, rx, stop);
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) -> Vec<u64> {
        let mut failed_snapshots = Vec::new();
        for m in msgs {
            let Some((q, _)) = self.queues.get(&m.to) else {
                tracing::warn!(to = m.to, "no address for raft peer; dropping message");
                continue;
            };
            let (to, snapshot) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            if q.try_send(m).is_err() {
                if snapshot {
                    failed_snapshots.push(to);
                }
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::warn!(dropped = self.dropped, "peer queue full; dropping raft messages");
                }
            }
        }
        failed_snapshots
    }
}

fn endpoint(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

/// Keeps a stream to one peer open and feeds it.
async fn peer_sender(from: u64, to: u64, addr: String, mut rx: mpsc::Receiver<Message>, node: NodeHandle) {
    let mut backoff = Duration::from_millis(50);
    let mut logged = false;
    loop {
        let connect = async {
            let channel = Endpoint::from_shared(endpoint(&addr))?
                .connect_timeout(Duration::from_secs(1))
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true)
                .connect()
                .await?;
            Ok::<_, anyhow::Error>(PeerServiceClient::new(channel).max_encoding_message_size(MAX_FRAME_BYTES))
        };
        // The whole connection, handshake included, is bounded: a peer behind a link that
        // accepts but never answers must not hold this task (and every message for it).
        let connected = match tokio::time::timeout(CONNECT_STALL, connect).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no answer within {CONNECT_STALL:?}")),
        };
        let mut client = match connected {
            Ok(c) => {
                if logged {
                    tracing::info!(peer = to, addr, "connected to raft peer");
                }
                logged = false;
                backoff = Duration::from_millis(50);
                c
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(peer = to, addr, "cannot reach raft peer: {e:#}");
                    logged = true;
                }
                node.report_unreachable(to);
                // Drop what queued up meanwhile: Raft resends what still matters, and learns
                // that a dropped snapshot did not arrive.
                while let Ok(m) = rx.try_recv() {
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        node.report_snapshot(to, false);
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (frames, frames_rx) = mpsc::channel::<pb::PeerFrame>(16);
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(frames_rx)).await });
        // Feed frames until the stream breaks or the node stops.
        let mut call = call;
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                r = &mut call => {
                    tracing::debug!(peer = to, "raft stream ended: {:?}", r.map(|r| r.map(|_| ())));
                    break;
                }
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if !send_batch(from, to, batch, &frames, &node).await {
                node.report_unreachable(to);
                break;
            }
        }
        call.abort();
        tokio::time::sleep(backoff).await;
    }
}

/// Sends one batch as frames; false if the stream is gone.
async fn send_batch(
    from: u64,
    to: u64,
    batch: Vec<Message>,
    frames: &mpsc::Sender<pb::PeerFrame>,
    node: &NodeHandle,
) -> bool {
    let mut small = Vec::new();
    let mut small_bytes = 0;
    for m in batch {
        let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
        let bytes = match m.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot encode a raft message: {e}");
                continue;
            }
        };
        if bytes.len() > CHUNK_BYTES {
            if !small.is_empty() {
                let frame = pb::PeerFrame { from, messages: std::mem::take(&mut small), chunk: None };
                if !send_frame(frames, frame).await {
                    return false;
                }
                small_bytes = 0;
            }
            let parts: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
            let n = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                let chunk = pb::MessageChunk { data: part.to_vec(), last: i + 1 == n };
                if !send_frame(frames, pb::PeerFrame { from, messages: Vec::new(), chunk: Some(chunk) }).await {
                    if is_snapshot {
                        node.report_snapshot(to, false);
                    }
                    return false;
                }
            }
            if is_snapshot {
                node.report_snapshot(to, true);
            }
            continue;
        }
        if small_bytes + bytes.len() > CHUNK_BYTES && !small.is_empty() {
            let frame = pb::PeerFrame { from, messages: std::mem::take(&mut small), chunk: None };
            if !send_frame(frames, frame).await {
                return false;
            }
            small_bytes = 0;
        }
        small_bytes += bytes.len();
        small.push(bytes);
        if is_snapshot {
            node.report_snapshot(to, true);
        }
    }
    if small.is_empty() {
        return true;
    }
    send_frame(frames, pb::PeerFrame { from, messages: small, chunk: None }).await
}

/// Hands a frame to the stream; false if the stream is gone or has not taken a frame for
/// [`FRAME_STALL`] (a peer that stopped reading, a link that holds every byte).
async fn send_frame(frames: &mpsc::Sender<pb::PeerFrame>, frame: pb::PeerFrame) -> bool {
    matches!(tokio::time::timeout(FRAME_STALL, frames.send(frame)).await, Ok(Ok(())))
}

/// Decodes one peer's frames into Raft messages, reassembling chunked ones. Refuses (with an
/// error naming the problem) anything malformed: the stream is then closed.
#[derive(Default)]
pub struct FrameDecoder {
    from: Option<u64>,
    partial: Vec<u8>,
}

impl FrameDecoder {
    /// The messages a frame completes.
    pub fn decode(&mut self, frame: pb::PeerFrame, own_id: u64) -> Result<Vec<Message>, String> {
        if frame.from == 0 || frame.from == own_id {
            return Err(format!("frame from invalid node id {}", frame.from));
        }
        if *self.from.get_or_insert(frame.from) != frame.from {
            return Err("node id changed within one stream".into());
        }
        let mut out = Vec::with_capacity(frame.messages.len() + 1);
        for bytes in frame.messages {
            out.push(parse(&bytes, frame.from, own_id)?);
        }
        if let Some(chunk) = frame.chunk {
            if self.partial.len() + chunk.data.len() > 1024 * 1024 * 1024 {
                return Err("a chunked message exceeds 1 GiB".into());
            }
            self.partial.extend_from_slice(&chunk.data);
            if chunk.last {
                let bytes = std::mem::take(&mut self.partial);
                out.push(parse(&bytes, frame.from, own_id)?);
            }
        }
        Ok(out)
    }
}

fn parse(bytes: &[u8], from: u64, own_id: u64) -> Result<Message, String> {
    let m = Message::parse_from_bytes(bytes).map_err(|e| format!("undecodable raft message: {e}"))?;
    if m.from != from || m.to != own_id {
        return Err(format!("message from {} to {} on a stream from {from} to {own_id}", m.from, m.to));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: u64, to: u64) -> Message {
        Message { from, to, msg_type: MessageType::MsgHeartbeat, ..Default::default() }
    }

    #[test]
    fn decodes_batches_and_chunks_and_refuses_garbage() {
        let mut d = FrameDecoder::default();
        let bytes = msg(2, 1).write_to_bytes().unwrap();
        let frame = pb::PeerFrame { from: 2, messages: vec![bytes.clone(), bytes.clone()], chunk: None };
        assert_eq!(d.decode(frame, 1).unwrap().len(), 2);
        let (a, b) = bytes.split_at(3);
        let first = pb::PeerFrame {
            from: 2,
            messages: vec![],
            chunk: Some(pb::MessageChunk { data: a.to_vec(), last: false }),
        };
        assert!(d.decode(first, 1).unwrap().is_empty());
        let rest =
            pb::PeerFrame { from: 2, messages: vec![], chunk: Some(pb::MessageChunk { data: b.to_vec(), last: true }) };
        assert_eq!(d.decode(rest, 1).unwrap()[0].from, 2);

        let garbage = pb::PeerFrame { from: 2, messages: vec![vec![0xff, 0xff, 0xff]], chunk: None };
        assert!(d.decode(garbage, 1).unwrap_err().contains("undecodable"));
        let spoofed = pb::PeerFrame { from: 2, messages: vec![msg(3, 1).write_to_bytes().unwrap()], chunk: None };
        assert!(d.decode(spoofed, 1).is_err());
        let other = pb::PeerFrame { from: 3, messages: vec![], chunk: None };
        assert!(d.decode(other, 1).is_err(), "one stream, one sender");
        assert!(FrameDecoder::default().decode(pb::PeerFrame { from: 1, messages: vec![], chunk: None }, 1).is_err());
    }
}
