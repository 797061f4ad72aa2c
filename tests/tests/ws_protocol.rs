//! The WebSocket wire rules, checked with a raw WebSocket client (ROBUSTNESS.md §8.3):
//! binary messages carry whole frames (several may share a message), a text message closes
//! with 1003, a message above the frame limit + 4 with 1009, an unmasked client frame with
//! 1002, and a kernel that closes sends GoAway, then Close 1000. Fragmented messages are
//! joined, pings get Pongs (one for the latest of a burst), and a client's Close is echoed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rpc_core::protocol::frame::{self, Frame, FrameDecoder, Kind};
use rpc_core::protocol::message::{GoAway, GoAwayCode};
use rpc_core::transport::{ByteStream, TransportInfo};
use rpc_core::{Limits, RpcKernel, controller};
use rpc_ws::{RpcWebSocketClient, RpcWebSocketServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[controller("ws_echo")]
pub trait Echo {
    async fn echo(&self, text: String) -> String;
}

struct EchoImpl;

impl Echo for EchoImpl {
    async fn echo(&self, text: String) -> String {
        text
    }
}

const WAIT: Duration = Duration::from_secs(5);

async fn server(kernel: RpcKernel) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    kernel.register(EchoServer::new(EchoImpl));
    let server = RpcWebSocketServer::bind("127.0.0.1:0", kernel).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.shutdown_timeout(Duration::from_millis(200)).serve_with_shutdown(
        async move {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

fn frame_bytes(kind: Kind, id: u32, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    let start = frame::begin_frame(&mut out, kind, id, None);
    body(&mut out);
    frame::finish_frame(&mut out, start);
    out
}

/// The Hello frame a real dialer sends, captured from a kernel dialing over a pipe (so this
/// test does not depend on the Hello body's layout).
async fn hello() -> BytesMut {
    let (ours, mut theirs) = tokio::io::duplex(64 << 10);
    let (read, write) = tokio::io::split(ours);
    let dialer = RpcKernel::new();
    let dial = tokio::spawn(async move {
        dialer.dial(ByteStream::new(read, write, TransportInfo::default())).await
    });
    let mut len = [0u8; 4];
    theirs.read_exact(&mut len).await.unwrap();
    let mut out = BytesMut::from(&len[..]);
    out.resize(4 + u32::from_be_bytes(len) as usize, 0);
    theirs.read_exact(&mut out[4..]).await.unwrap();
    dial.abort();
    out
}

async fn raw(addr: SocketAddr) -> Raw {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/rpc")).await.unwrap();
    ws
}

/// Reads frames from binary messages until `want` frames arrived.
async fn frames(ws: &mut Raw, want: usize) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut out = Vec::new();
    while out.len() < want {
        let message = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        let Message::Binary(data) = message else { panic!("expected binary, got {message:?}") };
        decoder.buffer().extend_from_slice(&data);
        while let Some(frame) = decoder.next_frame().unwrap() {
            out.push(frame);
        }
    }
    out
}

/// Reads until the Close frame and returns its code.
async fn close_code(ws: &mut Raw) -> CloseCode {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(until, ws.next()).await.expect("a Close in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) => panic!("Close without a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected Close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn several_frames_in_one_message_and_pings() {
    let (addr, _stop) = server(RpcKernel::new()).await;
    let mut ws = raw(addr).await;
    let mut message = hello().await;
    message.extend_from_slice(&frame_bytes(Kind::Ping, 7, |_| {}));
    ws.send(Message::Binary(message.freeze())).await.unwrap();
    let got = frames(&mut ws, 2).await;
    assert_eq!(got[0].kind, Kind::Hello);
    assert_eq!((got[1].kind, got[1].id), (Kind::Pong, 7));
    // WebSocket pings are answered, whatever the protocol state.
    ws.send(Message::Ping(Bytes::from_static(b"hi"))).await.unwrap();
    let pong = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"hi")));
}

#[tokio::test]
async fn text_message_closes_with_1003() {
    let (addr, _stop) = server(RpcKernel::new()).await;
    // Before the protocol handshake.
    let mut ws = raw(addr).await;
    ws.send(Message::text("hello?")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Unsupported);
    // After it.
    let mut ws = raw(addr).await;
    ws.send(Message::Binary(hello().await.freeze())).await.unwrap();
    frames(&mut ws, 1).await;
    ws.send(Message::text("{\"json\": true}")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Unsupported);
    // The server is unaffected.
    let client = RpcWebSocketClient::new(format!("ws://{addr}/rpc"));
    assert_eq!(client.controller::<EchoClient>().echo("ok".into()).await.unwrap(), "ok");
}

#[tokio::test]
async fn message_above_the_limit_closes_with_1009() {
    let limits = Limits::default().max_frame_size(64 << 10);
    let (addr, _stop) = server(RpcKernel::with_limits(limits.clone())).await;
    let mut ws = raw(addr).await;
    ws.send(Message::Binary(hello().await.freeze())).await.unwrap();
    frames(&mut ws, 1).await;
    // Frame limit + 4 is the largest message; one byte more is refused at its header.
    let too_big = vec![0u8; rpc_ws::max_message_size(&limits) + 1];
    ws.send(Message::Binary(too_big.into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Size);
}

#[tokio::test]
async fn kernel_close_sends_goaway_then_1000() {
    let (addr, stop) = server(RpcKernel::new()).await;
    let mut ws = raw(addr).await;
    ws.send(Message::Binary(hello().await.freeze())).await.unwrap();
    frames(&mut ws, 1).await;
    stop.send(()).unwrap();
    let goaway = frames(&mut ws, 1).await.remove(0);
    assert_eq!(goaway.kind, Kind::GoAway);
    assert_eq!(GoAway::decode(&goaway.body).unwrap().code, GoAwayCode::ShuttingDown);
    assert_eq!(close_code(&mut ws).await, CloseCode::Normal);
}

#[tokio::test]
async fn unmasked_client_frame_closes_with_1002() {
    let (addr, _stop) = server(RpcKernel::new()).await;
    let mut tcp = raw_tcp(addr).await;
    // A binary frame without the mask bit, as only a server may send.
    tcp.write_all(&[0x82, 0x03, 1, 2, 3]).await.unwrap();
    let mut reply = [0u8; 4];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(reply[0], 0x88, "a Close frame");
    assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), 1002);
}

#[tokio::test]
async fn full_server_refuses_the_upgrade_with_503() {
    let (addr, _stop) = server(RpcKernel::with_limits(Limits::default().max_connections(1))).await;
    let first = RpcWebSocketClient::connect(format!("ws://{addr}/rpc")).await.unwrap();
    match tokio_tungstenite::connect_async(format!("ws://{addr}/rpc")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    let second = RpcWebSocketClient::new(format!("ws://{addr}/rpc"));
    let err = second.connect().await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    // The connection already open is kept.
    assert_eq!(first.controller::<EchoClient>().echo("kept".into()).await.unwrap(), "kept");
}

/// Accepts only the token "ok", and no anonymous calls.
struct TokenOnly;

impl rpc_core::Security for TokenOnly {
    async fn authenticate(
        &self,
        token: &rpc_core::Token,
    ) -> Result<rpc_core::Session, rpc_core::RpcError> {
        match token.as_str() {
            Some("ok") => Ok(rpc_core::Session::new("user")),
            _ => Err(rpc_core::RpcError::unauthenticated("authentication failed")),
        }
    }

    fn allow_anonymous(&self) -> bool {
        false
    }
}

/// Upgrades a raw TCP connection by hand, so that the test can send partial frames.
async fn raw_tcp(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /rpc HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        assert!(response.len() < 4096, "response too long");
        tokio::time::timeout(WAIT, tcp.read_exact(&mut byte)).await.unwrap().unwrap();
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&response));
    tcp
}

/// The header of a client's frame of `len` payload bytes, with the FIN bit and opcode
/// given, masked with a zero key (the payload goes as it is), written by tungstenite.
fn client_frame_header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
    let header = FrameHeader {
        is_final: fin,
        opcode: OpCode::from(opcode),
        mask: Some([0; 4]),
        ..Default::default()
    };
    let mut out = Vec::new();
    header.format(len as u64, &mut out).unwrap();
    out
}

/// A whole client frame (see [`client_frame_header`]).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = client_frame_header(fin, opcode, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame the server sent (unmasked): its opcode and payload.
async fn server_frame(tcp: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut head)).await.unwrap().unwrap();
    let len = match head[1] & 0x7f {
        126 => tcp.read_u16().await.unwrap() as usize,
        127 => tcp.read_u64().await.unwrap() as usize,
        n => n as usize,
    };
    let mut payload = vec![0; len];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut payload)).await.unwrap().unwrap();
    (head[0] & 0x0f, payload)
}

/// Before authentication a frame may have at most `Limits::max_preauth_frame_size` bytes.
/// Over WebSocket a larger message is refused (Close 1009) as its header arrives, not once
/// tungstenite has buffered the whole message (up to the full frame limit, 1 MiB): here
/// the client declares 1 MiB, sends 20 KiB of it and waits; the close comes at once, long
/// before the authentication deadline. After authenticating, large messages pass.
#[tokio::test]
async fn a_large_message_before_authentication_is_refused_at_its_header() {
    let limits = Limits::default().auth_timeout(Duration::from_secs(30));
    let kernel = RpcKernel::with_limits(limits);
    kernel.set_security(TokenOnly);
    let (addr, _stop) = server(kernel).await;

    let mut tcp = raw_tcp(addr).await;
    let hello = hello().await;
    let message = client_frame(true, 0x2, &hello);
    tcp.write_all(&message).await.unwrap();
    let (opcode, payload) = server_frame(&mut tcp).await;
    assert_eq!(opcode, 2, "the server's Hello in a binary message");
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.buffer().extend_from_slice(&payload);
    assert_eq!(decoder.next_frame().unwrap().unwrap().kind, Kind::Hello);

    let started = std::time::Instant::now();
    let mut partial = client_frame_header(true, 0x2, 1 << 20);
    partial.extend(std::iter::repeat_n(0u8, 20 << 10));
    // The server may close before reading all of it.
    let _ = tcp.write_all(&partial).await;
    let (opcode, payload) = server_frame(&mut tcp).await;
    assert_eq!(opcode, 8, "a Close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
    assert!(started.elapsed() < Duration::from_secs(5), "closed at once: {:?}", started.elapsed());

    // An authenticated client sends and receives messages up to the full frame limit.
    let client = RpcWebSocketClient::new(format!("ws://{addr}/rpc"));
    client.set_token("ok");
    let big = "x".repeat(200 << 10);
    assert_eq!(client.controller::<EchoClient>().echo(big.clone()).await.unwrap(), big);
}

/// A message may come in fragments with a Ping between them (RFC 6455 §5.4): the server
/// answers the Ping at once and joins the fragments into the one Hello they carry.
#[tokio::test]
async fn a_fragmented_message_is_joined_and_a_ping_between_its_fragments_is_answered() {
    let (addr, _stop) = server(RpcKernel::new()).await;
    let mut tcp = raw_tcp(addr).await;
    let hello = hello().await;
    let (first, rest) = hello.split_at(hello.len() / 2);
    let mut bytes = client_frame(false, 0x2, first);
    bytes.extend(client_frame(true, 0x9, b"ping"));
    bytes.extend(client_frame(true, 0x0, rest));
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(server_frame(&mut tcp).await, (0xA, b"ping".to_vec()), "the Pong first");
    let (opcode, payload) = server_frame(&mut tcp).await;
    assert_eq!(opcode, 2);
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.buffer().extend_from_slice(&payload);
    assert_eq!(decoder.next_frame().unwrap().unwrap().kind, Kind::Hello);
}

/// A client that closes gets its Close code back (RFC 6455 §5.5.1), and the server is
/// unaffected.
#[tokio::test]
async fn a_close_from_the_client_is_echoed() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let (addr, _stop) = server(RpcKernel::new()).await;
    let mut ws = raw(addr).await;
    ws.send(Message::Binary(hello().await.freeze())).await.unwrap();
    frames(&mut ws, 1).await;
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "bye".into() })))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Away);
    let client = RpcWebSocketClient::new(format!("ws://{addr}/rpc"));
    assert_eq!(client.controller::<EchoClient>().echo("ok".into()).await.unwrap(), "ok");
}

/// A flood of Pings, each answered or replaced by a later one (only the latest unanswered
/// Ping gets a Pong, in order), and the protocol handshake sent after them still completes.
#[tokio::test]
async fn a_ping_flood_gets_pongs_in_order_and_the_handshake_still_completes() {
    let (addr, _stop) = server(RpcKernel::new()).await;
    let mut tcp = raw_tcp(addr).await;
    let mut bytes = Vec::new();
    for i in 0..1000u32 {
        bytes.extend(client_frame(true, 0x9, &i.to_be_bytes()));
    }
    bytes.extend(client_frame(true, 0x2, &hello().await));
    tcp.write_all(&bytes).await.unwrap();
    let mut pongs = Vec::new();
    loop {
        let (opcode, payload) = server_frame(&mut tcp).await;
        match opcode {
            0xA => pongs.push(u32::from_be_bytes(payload[..4].try_into().unwrap())),
            2 => break,
            other => panic!("unexpected opcode {other}"),
        }
        assert!(pongs.len() <= 1000);
    }
    assert!(!pongs.is_empty());
    assert!(pongs.windows(2).all(|w| w[0] < w[1]), "pongs in ping order: {pongs:?}");
}
