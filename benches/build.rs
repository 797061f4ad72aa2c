//! Detects the parts of the framework that other work is still landing, so that their rows
//! appear as soon as they exist: `has_ws` once rpc-ws offers its server and client.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_ws)");
    println!("cargo::rerun-if-changed=../rpc-ws/src");
    let ws = std::fs::read_dir("../rpc-ws/src")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<String>();
    if ws.contains("pub struct RpcWebSocketServer") && ws.contains("pub struct RpcWebSocketClient")
    {
        println!("cargo::rustc-cfg=has_ws");
    }
}
