//! Nominal types (issue 7): a `TypeRegistry` refuses two types under one name at start-up,
//! and `AnyEntity` carries values whose type is known only at run time across every
//! transport, where a name that does not match what the receiver expects is a clear error,
//! never a silent mis-decode.

use rpc_core::{
    AnyEntity, DuplicateEntity, Entity, ErrorKind, RpcError, RpcKernel, TypeRegistry, controller,
};
use serde::{Deserialize, Serialize};
use tests::transport_tests;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "zoo.cat")]
pub struct Cat {
    pub name: String,
    pub lives: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "zoo.dog")]
pub struct Dog {
    pub name: String,
    pub good: bool,
}

/// Claims the cat's name with another shape (a second crate, or a newer version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "zoo.cat")]
pub struct Impostor {
    pub id: u64,
}

/// Entities nested in a plain struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kennel {
    pub owner: String,
    pub pets: Vec<AnyEntity>,
}

#[controller("zoo")]
pub trait Zoo {
    /// Describes each pet by its run-time type.
    async fn describe(&self, kennel: Kennel) -> Vec<String>;
    /// Expects a cat: anything else is refused with a clear error.
    async fn feed_cat(&self, cat: AnyEntity) -> Result<String, RpcError>;
    /// A cat or a dog, depending on the name.
    async fn adopt(&self, name: String) -> AnyEntity;
}

struct ZooImpl;

impl Zoo for ZooImpl {
    async fn describe(&self, kennel: Kennel) -> Vec<String> {
        kennel
            .pets
            .iter()
            .map(|pet| {
                if let Ok(cat) = pet.downcast::<Cat>() {
                    format!("{}'s cat {} ({} lives)", kennel.owner, cat.name, cat.lives)
                } else if let Ok(dog) = pet.downcast::<Dog>() {
                    format!("{}'s dog {} (good: {})", kennel.owner, dog.name, dog.good)
                } else {
                    format!("unknown entity `{}`", pet.name())
                }
            })
            .collect()
    }

    async fn feed_cat(&self, cat: AnyEntity) -> Result<String, RpcError> {
        let cat = cat.downcast::<Cat>()?;
        Ok(format!("fed {}", cat.name))
    }

    async fn adopt(&self, name: String) -> AnyEntity {
        if name == "rex" {
            AnyEntity::new(&Dog { name, good: true }).unwrap()
        } else {
            AnyEntity::new(&Cat { name, lives: 9 }).unwrap()
        }
    }
}

fn setup() -> RpcKernel {
    let kernel = RpcKernel::new();
    kernel.register(ZooServer::new(ZooImpl));
    kernel
}

#[test]
fn two_types_under_one_name_are_refused_at_registration() {
    let mut registry = TypeRegistry::new();
    registry.register::<Cat>().unwrap();
    registry.register::<Dog>().unwrap();
    registry.register::<Cat>().expect("the same type again is fine");

    let err = registry.register::<Impostor>().unwrap_err();
    assert_eq!(
        err,
        DuplicateEntity {
            name: "zoo.cat",
            first: std::any::type_name::<Cat>(),
            second: std::any::type_name::<Impostor>(),
        }
    );
    let text = err.to_string();
    for part in ["zoo.cat", "Cat", "Impostor"] {
        assert!(text.contains(part), "the error names `{part}`: {text}");
    }
    // Never a silent overwrite: the first registration stands.
    assert_eq!(registry.type_name("zoo.cat"), Some(std::any::type_name::<Cat>()));
    assert_eq!(registry.type_name("zoo.dog"), Some(std::any::type_name::<Dog>()));
    assert!(!registry.contains("zoo.bird"));

    // The same holds in the other order.
    let mut other = TypeRegistry::new();
    other.register::<Impostor>().unwrap();
    let err = other.register::<Cat>().unwrap_err();
    assert_eq!(
        (err.first, err.second),
        (std::any::type_name::<Impostor>(), std::any::type_name::<Cat>())
    );
}

#[test]
fn a_name_mismatch_is_a_clear_error() {
    let cat = AnyEntity::new(&Cat { name: "Tom".into(), lives: 9 }).unwrap();
    assert_eq!(cat.name(), "zoo.cat");
    assert!(cat.is::<Cat>() && !cat.is::<Dog>());
    assert_eq!(cat.downcast::<Cat>().unwrap(), Cat { name: "Tom".into(), lives: 9 });

    let err = cat.downcast::<Dog>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArguments);
    let text = err.to_string();
    assert!(text.contains("`zoo.dog`") && text.contains("`zoo.cat`"), "names both: {text}");

    // Same name, other shape: refused, not mis-decoded.
    let err = cat.downcast::<Impostor>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArguments);
    assert!(err.to_string().contains("zoo.cat"), "{err}");
}

transport_tests! {
    setup = setup;

    async fn entities_known_only_at_run_time_cross_the_wire(h: Harness) {
        let client = h.client();
        let zoo = client.controller::<ZooClient>();
        let kennel = Kennel {
            owner: "Ann".into(),
            pets: vec![
                AnyEntity::new(&Cat { name: "Tom".into(), lives: 9 }).unwrap(),
                AnyEntity::new(&Dog { name: "Rex".into(), good: true }).unwrap(),
                AnyEntity::new(&Impostor { id: 3 }).unwrap(),
            ],
        };
        assert_eq!(
            zoo.describe(kennel).await.unwrap(),
            [
                "Ann's cat Tom (9 lives)",
                "Ann's dog Rex (good: true)",
                "unknown entity `zoo.cat`",
            ]
        );

        let rex = zoo.adopt("rex".into()).await.unwrap();
        assert_eq!(rex.name(), "zoo.dog");
        assert_eq!(rex.downcast::<Dog>().unwrap(), Dog { name: "rex".into(), good: true });
        let err = rex.downcast::<Cat>().unwrap_err();
        assert!(err.to_string().contains("`zoo.dog`"), "{err}");
        assert_eq!(zoo.adopt("tom".into()).await.unwrap().downcast::<Cat>().unwrap().lives, 9);

        // The receiver expects a cat: a dog is a clear error that names both.
        assert_eq!(
            zoo.feed_cat(AnyEntity::new(&Cat { name: "Tom".into(), lives: 1 }).unwrap()).await.unwrap(),
            "fed Tom"
        );
        let err = zoo.feed_cat(AnyEntity::new(&Dog { name: "Rex".into(), good: false }).unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");
        assert!(err.to_string().contains("`zoo.cat`") && err.to_string().contains("`zoo.dog`"), "{err}");
        let err = zoo.feed_cat(AnyEntity::new(&Impostor { id: 1 }).unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");
        h.shutdown().await;
    }
}
