//! `PeerService`: Raft message streams between nodes, and writes forwarded by followers.

use baton_core::command::Command;
use baton_proto::v1 as pb;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, ApiError, now_ms};
use crate::raft::transport::FrameDecoder;

#[tonic::async_trait]
impl pb::peer_service_server::PeerService for Api {
    async fn raft(&self, req: Request<Streaming<pb::PeerFrame>>) -> Result<Response<pb::PeerAck>, Status> {
        let mut frames = req.into_inner();
        let mut decoder = FrameDecoder::default();
        let own = self.node.status().id;
        while let Some(frame) = frames.next().await {
            let frame = frame?;
            let from = frame.from;
            if self.address_of(from).is_none() && !self.node.status().voters.contains(&from) {
                tracing::warn!(from, "refusing raft messages from a node that is not a member");
                return Err(Status::permission_denied(format!("node {from} is not a member of this cluster")));
            }
            match decoder.decode(frame, own) {
                Ok(msgs) => {
                    for m in msgs {
                        self.node.step(m);
                    }
                }
                Err(why) => {
                    tracing::warn!(from, "closing a peer stream: {why}");
                    return Err(Status::invalid_argument(why));
                }
            }
        }
        Ok(Response::new(pb::PeerAck {}))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = req.into_inner();
        let mut cmd = Command::decode(&req.command)
            .map_err(|e| Status::invalid_argument(format!("undecodable command from node {}: {e}", req.from)))?;
        // The leader stamps the time, whatever the forwarding node's clock says.
        cmd.at_ms = now_ms();
        let (reply, index) = self.node.propose(&cmd).await.map_err(ApiError::from)?;
        let reply = serde_json::to_vec(&reply).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ProposeResponse { reply, index }))
    }
}
