//! Expansion tests: the generated tokens, compared with hand-written code.

use super::*;

fn expand_str(attr: TokenStream, item: TokenStream) -> String {
    expand(attr, item).to_string()
}

#[test]
fn print_example() {
    let out = expand_str(
        quote!("users"),
        quote! {
            pub trait Users {
                /// docs kept
                async fn hello(&self, title: String) -> String;
                async fn get_user(&self, id: u64) -> Result<User, CannotSaveUser>;
                #[action(group = "secret", data(role = "admin"))]
                async fn save_user(&self, user: User) -> Result<(), CannotSaveUser>;
                #[action(name = "tick_stream", group = "a", group = "b")]
                async fn ticks(&self, every_ms: u64, count: u32) -> RpcStream<u64>;
                async fn whoami(&self, ctx: &Context) -> String;
                async fn nothing(&self);
                async fn upload(&self, name: String, chunks: RpcStream<Vec<u8>>) -> Result<u64, E>;
                async fn echo(&self, input: RpcStream<u8>) -> Result<RpcStream<u8>, E>;
                async fn with_default(&self, mut x: u32) -> u32 { x += 1; x }
            }
        },
    );
    std::fs::write(std::env::temp_dir().join("expansion.rs"), out).unwrap();
}
