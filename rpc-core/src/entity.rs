//! Nominal types: values that cross the wire with a stable name, as Deepkit's `@entity.name`.
//!
//! A type gets its name with `#[derive(Entity)]` and `#[entity(name = "...")]`. Errors an action
//! declares travel with that name, so [`RpcError::downcast`](crate::RpcError::downcast) works
//! across the wire; [`AnyEntity`] carries a value whose type is only known at run time, and a
//! [`TypeRegistry`] tells which names a program knows.

use std::any::TypeId;
use std::collections::HashMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::RpcError;
use crate::protocol::codec;

/// A type with a stable name on the wire.
///
/// ```
/// use rpc_core::Entity;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Entity)]
/// #[entity(name = "user")]
/// struct User { id: u64 }
///
/// assert_eq!(User::ENTITY_NAME, "user");
/// ```
pub trait Entity: 'static {
    /// The name this type is known by on both sides of a connection.
    const ENTITY_NAME: &'static str;
}

/// A value of some [`Entity`] type, with its name: a map `{name, value}` on the wire, the
/// value being the entity's MessagePack encoding as bytes.
///
/// ```
/// use rpc_core::{AnyEntity, Entity};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, Entity)]
/// #[entity(name = "user")]
/// struct User { id: u64 }
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, Entity)]
/// #[entity(name = "group")]
/// struct Group { id: u64 }
///
/// let any = AnyEntity::new(&User { id: 1 }).unwrap();
/// assert_eq!(any.name(), "user");
/// assert_eq!(any.downcast::<User>().unwrap(), User { id: 1 });
/// let err = any.downcast::<Group>().unwrap_err();
/// assert!(err.to_string().contains("`user`"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnyEntity {
    name: String,
    #[serde(with = "serde_bytes_compat")]
    value: Bytes,
}

mod serde_bytes_compat {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl AnyEntity {
    /// Wraps `value` with its entity name.
    pub fn new<T: Entity + Serialize>(value: &T) -> Result<AnyEntity, RpcError> {
        Ok(AnyEntity {
            name: T::ENTITY_NAME.to_string(),
            value: codec::encode_value(value)?.into(),
        })
    }

    /// The entity name of the value inside.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the value inside is a `T`.
    pub fn is<T: Entity>(&self) -> bool {
        self.name == T::ENTITY_NAME
    }

    /// The value as a `T`; an error names both types if the names do not match.
    pub fn downcast<T: Entity + DeserializeOwned>(&self) -> Result<T, RpcError> {
        if self.name != T::ENTITY_NAME {
            return Err(RpcError::bad_arguments(format!(
                "expected an entity `{}`, got an entity `{}`",
                T::ENTITY_NAME,
                self.name
            )));
        }
        codec::decode_value(&self.value).map_err(|e| {
            RpcError::bad_arguments(format!("entity `{}` did not decode: {e}", self.name))
        })
    }
}

/// Two types registered under one name: a start-up error, never a silent overwrite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entity name `{name}` is registered twice: by `{first}` and by `{second}`")]
pub struct DuplicateEntity {
    /// The contested name.
    pub name: &'static str,
    /// The type registered first.
    pub first: &'static str,
    /// The type that tried to take the name.
    pub second: &'static str,
}

/// The names a program knows, and which Rust type each stands for.
///
/// ```
/// use rpc_core::{Entity, TypeRegistry};
///
/// #[derive(Entity)]
/// #[entity(name = "user")]
/// struct User;
/// #[derive(Entity)]
/// #[entity(name = "user")]
/// struct Impostor;
///
/// let mut registry = TypeRegistry::new();
/// registry.register::<User>().unwrap();
/// registry.register::<User>().unwrap(); // the same type again is fine
/// let err = registry.register::<Impostor>().unwrap_err();
/// assert_eq!(err.name, "user");
/// assert!(registry.contains("user"));
/// ```
#[derive(Debug, Default, Clone)]
pub struct TypeRegistry {
    by_name: HashMap<&'static str, (TypeId, &'static str)>,
}

impl TypeRegistry {
    /// An empty registry.
    pub fn new() -> TypeRegistry {
        TypeRegistry::default()
    }

    /// Registers `T` under its entity name.
    pub fn register<T: Entity>(&mut self) -> Result<(), DuplicateEntity> {
        let id = TypeId::of::<T>();
        let type_name = std::any::type_name::<T>();
        match self.by_name.get(T::ENTITY_NAME) {
            Some((existing, _)) if *existing == id => Ok(()),
            Some((_, first)) => {
                Err(DuplicateEntity { name: T::ENTITY_NAME, first, second: type_name })
            }
            None => {
                self.by_name.insert(T::ENTITY_NAME, (id, type_name));
                Ok(())
            }
        }
    }

    /// Whether a type is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The Rust type name registered under `name`.
    pub fn type_name(&self, name: &str) -> Option<&'static str> {
        self.by_name.get(name).map(|(_, n)| *n)
    }
}
