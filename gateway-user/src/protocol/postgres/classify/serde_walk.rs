//! The parse tree streamed into the classifier's `Walker` through serde: every pg_query protobuf
//! type derives `Serialize`, so this `Serializer` sees every field of every node with its type
//! name, and nothing is materialised along the way.

use std::fmt;

use serde::ser::{self, Serialize, Serializer};

use super::{frame::Scalar, nodes::NODE, walker::Walker};

#[derive(Debug)]
pub(super) struct WalkError(String);

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl ser::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

type WalkResult = Result<(), WalkError>;

impl<'a> Serializer for &'a mut Walker {
    type Ok = ();
    type Error = WalkError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = StructWalk<'a>;
    type SerializeStructVariant = StructWalk<'a>;

    fn serialize_bool(self, v: bool) -> WalkResult {
        self.scalar(Scalar::Bool(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> WalkResult {
        self.scalar(Scalar::Int(v));
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_u16(self, v: u16) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_u32(self, v: u32) -> WalkResult {
        self.serialize_i64(v.into())
    }
    fn serialize_u64(self, v: u64) -> WalkResult {
        self.serialize_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn serialize_f32(self, _v: f32) -> WalkResult {
        Ok(())
    }
    fn serialize_f64(self, _v: f64) -> WalkResult {
        Ok(())
    }
    fn serialize_char(self, v: char) -> WalkResult {
        self.scalar(Scalar::Str(v.to_string()));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> WalkResult {
        self.scalar(Scalar::Str(v.to_owned()));
        Ok(())
    }
    fn serialize_bytes(self, _v: &[u8]) -> WalkResult {
        Ok(())
    }
    fn serialize_none(self) -> WalkResult {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> WalkResult {
        self.mark_present();
        value.serialize(self)
    }
    fn serialize_unit(self) -> WalkResult {
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> WalkResult {
        Ok(())
    }
    fn serialize_unit_variant(self, _name: &'static str, _i: u32, _v: &'static str) -> WalkResult {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> WalkResult {
        value.serialize(self)
    }
    // The `Node` oneof: the variant's payload is a struct that names its own type.
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _i: u32,
        _variant: &'static str,
        value: &T,
    ) -> WalkResult {
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, WalkError> {
        if len != Some(0) {
            self.mark_present();
        }
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _i: u32,
        _variant: &'static str,
        len: usize,
    ) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, WalkError> {
        self.serialize_seq(len)
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<StructWalk<'a>, WalkError> {
        // `Node` is only the oneof wrapper around the real node: no frame of its own, so the
        // real node's parent is the node that holds the field.
        let framed = name != NODE;
        if framed {
            self.enter(name);
        }
        Ok(StructWalk { w: self, framed })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<StructWalk<'a>, WalkError> {
        self.enter(variant);
        Ok(StructWalk {
            w: self,
            framed: true,
        })
    }
}

impl ser::SerializeSeq for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> WalkResult {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> WalkResult {
        value.serialize(&mut **self)
    }
    fn end(self) -> WalkResult {
        Ok(())
    }
}

pub(super) struct StructWalk<'a> {
    w: &'a mut Walker,
    framed: bool,
}

impl StructWalk<'_> {
    fn field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> WalkResult {
        if self.framed {
            if let Some(top) = self.w.stack.last_mut() {
                top.field = key;
            }
        }
        value.serialize(&mut *self.w)
    }

    fn finish(self) -> WalkResult {
        if self.framed {
            self.w.leave();
        }
        Ok(())
    }
}

impl ser::SerializeStruct for StructWalk<'_> {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> WalkResult {
        self.field(key, value)
    }
    fn end(self) -> WalkResult {
        self.finish()
    }
}

impl ser::SerializeStructVariant for StructWalk<'_> {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> WalkResult {
        self.field(key, value)
    }
    fn end(self) -> WalkResult {
        self.finish()
    }
}
