//! gRPC surface of the real daemon (h2c on the HTTP port): every method of every service whose
//! descriptor the daemon serves goes through the auth matrix with a raw client, then the real
//! clients check health, status, events and reflection.

use std::collections::BTreeSet;
use std::str::FromStr;

use ondevice_auth::Scope;

use ondevice_proto::v1::status_service_client::StatusServiceClient;
use ondevice_proto::v1::{GetStatusRequest, WatchEventsRequest};
use tokio_util::bytes::Buf;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::common::{Daemon, GARBAGE_KEY, Home, UNKNOWN_KEY};

/// The only public service (INTERFACE.md, Auth).
const PUBLIC_SERVICE: &str = "grpc.health.v1.Health";
/// The scope of a method (`/package.Service/Method`), from the server's own table: the same
/// table `ScopeGuard` enforces, itself checked against the descriptors by a server test.
fn scope_of(method: &str) -> Option<Scope> {
    ondevice_server::grpc::METHOD_SCOPES
        .iter()
        .find(|(service, name, _)| method == format!("/{service}/{name}"))
        .map(|&(_, _, scope)| scope)
}

async fn channel(daemon: &Daemon) -> Channel {
    tonic::transport::Endpoint::from_shared(daemon.url("")).expect("endpoint").connect().await.expect("gRPC connect")
}

fn bearer(key: &str) -> MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {key}").parse().expect("metadata value")
}

/// Encodes the empty message (valid for every request type) and counts response bytes, so
/// any method can be called without its generated types.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = ();
    type Decode = usize;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, (): (), _dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = usize;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(n))
    }
}

/// Calls `/service/Method` with one empty request message (as a stream, which every method
/// kind accepts on the wire) and returns the code of the first answer.
async fn raw_call(channel: &Channel, method: &str, key: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut req = Request::new(tokio_stream::iter([()]));
    if let Some(k) = key {
        req.metadata_mut().insert("authorization", bearer(k));
    }
    let path = PathAndQuery::from_str(method).expect("method path");
    match grpc.streaming(req, path, RawCodec).await {
        Err(status) => status.code(),
        Ok(resp) => match resp.into_inner().message().await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        },
    }
}

/// `/package.Service/Method` of every method in an encoded `FileDescriptorSet`.
fn methods(fds: &[u8]) -> Vec<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(fds).expect("descriptor set decodes");
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                out.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    out
}

fn service_of(method: &str) -> &str {
    method.trim_start_matches('/').split('/').next().unwrap_or("")
}

/// Services the daemon lists through reflection (with a read key).
async fn reflected_services(channel: &Channel, key: &str) -> BTreeSet<String> {
    let auth = bearer(key);
    let mut client = ServerReflectionClient::with_interceptor(channel.clone(), move |mut req: Request<()>| {
        req.metadata_mut().insert("authorization", auth.clone());
        Ok(req)
    });
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers =
        client.server_reflection_info(tokio_stream::iter([ask])).await.expect("reflection call").into_inner();
    let answer = answers.message().await.expect("reflection answer").expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn every_grpc_method_enforces_auth() {
    let daemon = Daemon::start(Home::new());
    let channel = channel(&daemon).await;
    let read = daemon.key(&["read"]).await;
    let infer = daemon.key(&["infer"]).await;
    let models = daemon.key(&["models"]).await;
    let revoked = daemon.key(&["admin"]).await;
    daemon.revoke(&revoked.id).await;

    // Every method of every descriptor the daemon registers for reflection.
    let all: Vec<String> = [
        ondevice_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .flat_map(methods)
    .collect();
    for expected in [
        "/ondevice.v1.StatusService/GetStatus",
        "/ondevice.v1.ModelsService/ListModels",
        "/ondevice.v1.ModelsService/PullModel",
        "/ondevice.v1.JobsService/List",
        "/ondevice.v1.JobsService/Watch",
        "/ondevice.v1.StatusService/WatchEvents",
        "/ondevice.v1.InferenceService/Chat",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        assert!(all.iter().any(|m| m == expected), "{expected} missing from the descriptors: {all:?}");
    }
    let services: BTreeSet<&str> = all.iter().map(|m| service_of(m)).collect();
    for listed in reflected_services(&channel, &read.secret).await {
        assert!(services.contains(listed.as_str()), "reflection lists {listed}, whose methods this test does not know");
    }

    for method in &all {
        let service = service_of(method);
        if service == PUBLIC_SERVICE {
            assert_eq!(raw_call(&channel, method, None).await, Code::Ok, "{method} is public");
            continue;
        }
        // Every scope implies read, so PERMISSION_DENIED is unreachable for read methods with a valid
        // key; a revoked admin key stands in for the missing scope (infer services are checked below).
        for (key, what) in [
            (None, "no key"),
            (Some(UNKNOWN_KEY), "an unknown key"),
            (Some(GARBAGE_KEY), "a garbage key"),
            (Some(revoked.secret.as_str()), "a revoked key"),
        ] {
            assert_eq!(raw_call(&channel, method, key).await, Code::Unauthenticated, "{method} with {what}");
        }
        let with_read = raw_call(&channel, method, Some(&read.secret)).await;
        let scope = scope_of(method).unwrap_or_else(|| panic!("{method} has no scope in METHOD_SCOPES"));
        let reached =
            |code: Code| ![Code::Unauthenticated, Code::PermissionDenied, Code::Unimplemented].contains(&code);
        if scope == Scope::Read {
            assert!(reached(with_read), "{method} with a read key answered {with_read:?}");
            continue;
        }
        // Every other scope: a read key is refused, a key with the scope reaches the method (an
        // empty request is invalid or names nothing).
        assert_eq!(with_read, Code::PermissionDenied, "{method} with a read key");
        let holder = match scope {
            Scope::Models => models.secret.as_str(),
            Scope::Infer => infer.secret.as_str(),
            _ => daemon.admin_key(),
        };
        let with_scope = raw_call(&channel, method, Some(holder)).await;
        assert!(reached(with_scope), "{method} with a {scope:?} key answered {with_scope:?}");
    }
    // A method no proto declares is still default-deny.
    assert_eq!(raw_call(&channel, "/ondevice.v1.Nothing/Here", None).await, Code::Unauthenticated);
    assert_eq!(raw_call(&channel, "/ondevice.v1.Nothing/Here", Some(&read.secret)).await, Code::Unimplemented);
}

#[tokio::test]
async fn grpc_clients_get_health_status_events_and_reflection() {
    let daemon = Daemon::start(Home::new());
    let channel = channel(&daemon).await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "ondevice.v1.StatusService"] {
        let resp = health
            .check(HealthCheckRequest { service: service.to_owned() })
            .await
            .unwrap_or_else(|s| panic!("health check {service:?} without a key: {s}"));
        assert_eq!(resp.into_inner().status(), ServingStatus::Serving, "health of {service:?}");
    }

    let read = daemon.key(&["read"]).await;
    let auth = bearer(&read.secret);
    let mut status = StatusServiceClient::with_interceptor(channel.clone(), move |mut req: Request<()>| {
        req.metadata_mut().insert("authorization", auth.clone());
        Ok(req)
    });
    let s = status.get_status(GetStatusRequest::default()).await.expect("GetStatus").into_inner();
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(s.listen_address, daemon.addr().to_string());
    assert!(s.auth_enabled && s.ready, "{s:?}");

    let mut events = status.watch_events(WatchEventsRequest::default()).await.expect("WatchEvents").into_inner();
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), events.message())
        .await
        .expect("first event in time")
        .expect("event stream")
        .expect("one event");
    assert_eq!(first.kind, "status");
    let data: serde_json::Value = serde_json::from_str(&first.json).expect("event JSON");
    assert_eq!(data["listen_address"], daemon.addr().to_string(), "{data}");

    let listed = reflected_services(&channel, &read.secret).await;
    for service in ["ondevice.v1.StatusService", "grpc.health.v1.Health"] {
        assert!(listed.contains(service), "reflection lists {listed:?}");
    }
}
