//! The fast JSON writer: a serde `Serializer` into a `Vec<u8>` that writes
//! exactly what `serde_json::to_writer` writes (compact form) for the
//! common shapes: structs, maps with string keys, sequences, strings,
//! integers, floats, options, unit variants.
//!
//! What it does not handle (map keys that are not strings, serde_json's
//! `RawValue`, an error raised by a `Serialize` impl) comes back as
//! [`Fallback`]; the caller then truncates what was written and runs
//! serde_json, so the bytes or the error text are serde_json's. Floats
//! with a fraction, and escaped strings, are written by serde_json itself.

use serde::ser::{self, Serialize};

use super::{extend, Fallback};

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether a byte of `x` is zero.
#[inline]
fn has_zero(x: u64) -> bool {
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Whether `s` can be written between quotes as it is (no `"`, `\` or
/// control character).
#[inline(always)]
fn plain(s: &[u8]) -> bool {
    let (chunks, rest) = s.as_chunks::<8>();
    chunks.iter().all(|c| {
        let x = u64::from_ne_bytes(*c);
        !(has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
            || x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0)
    }) && rest.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Writes `s` as a JSON string.
#[inline(always)]
fn string(out: &mut Vec<u8>, s: &str) {
    if plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        extend(out, s.as_bytes());
        out.push(b'"');
    } else {
        escaped(out, s)
    }
}

#[cold]
#[inline(never)]
fn escaped(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` to a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, s);
}

/// Writes `f` as serde_json does: `null` when not finite; integral values
/// below 10^15 as their digits and `.0` (what its shortest-digits
/// formatter prints for them); others by serde_json.
#[inline]
fn float(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() && f.trunc() == f && f.abs() < 1e15 && !(f == 0.0 && f.is_sign_negative()) {
        let mut b = itoa::Buffer::new();
        extend(out, b.format(f as i64).as_bytes());
        extend(out, b".0");
    } else {
        other_float(out, f)
    }
}

#[cold]
#[inline(never)]
fn other_float(out: &mut Vec<u8>, f: f64) {
    let _ = serde_json::to_writer(out, &f);
}

/// Writes into `out`.
pub(crate) struct Serializer<'a> {
    pub(crate) out: &'a mut Vec<u8>,
}

/// A container being written: whether an element was written yet.
pub(crate) struct Compound<'s, 'a> {
    ser: &'s mut Serializer<'a>,
    first: bool,
    /// Closing bytes: `]`, `}`, or `]}` / `}}` for a variant's contents.
    close: &'static [u8],
}

impl Compound<'_, '_> {
    #[inline]
    fn comma(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.ser.out.push(b',');
        }
    }
}

macro_rules! integers {
    ($($method:ident: $ty:ty)*) => {
        $(
            #[inline]
            fn $method(self, v: $ty) -> Result<(), Fallback> {
                let mut b = itoa::Buffer::new();
                extend(self.out, b.format(v).as_bytes());
                Ok(())
            }
        )*
    };
}

impl<'s, 'a> ser::Serializer for &'s mut Serializer<'a> {
    type Ok = ();
    type Error = Fallback;
    type SerializeSeq = Compound<'s, 'a>;
    type SerializeTuple = Compound<'s, 'a>;
    type SerializeTupleStruct = Compound<'s, 'a>;
    type SerializeTupleVariant = Compound<'s, 'a>;
    type SerializeMap = Compound<'s, 'a>;
    type SerializeStruct = Compound<'s, 'a>;
    type SerializeStructVariant = Compound<'s, 'a>;

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Fallback> {
        extend(self.out, if v { b"true" } else { b"false" });
        Ok(())
    }

    integers! {
        serialize_i8: i8 serialize_i16: i16 serialize_i32: i32 serialize_i64: i64
        serialize_i128: i128
        serialize_u8: u8 serialize_u16: u16 serialize_u32: u32 serialize_u64: u64
        serialize_u128: u128
    }

    fn serialize_f32(self, v: f32) -> Result<(), Fallback> {
        // serde_json prints the shortest digits of the `f32`.
        let _ = serde_json::to_writer(&mut *self.out, &v);
        Ok(())
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), Fallback> {
        float(self.out, v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Fallback> {
        string(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Fallback> {
        string(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Fallback> {
        self.out.push(b'[');
        let mut b = itoa::Buffer::new();
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b.format(*x).as_bytes());
        }
        self.out.push(b']');
        Ok(())
    }

    #[inline]
    fn serialize_none(self) -> Result<(), Fallback> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Fallback> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Fallback> {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Fallback> {
        self.serialize_none()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Fallback> {
        string(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Fallback> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Fallback> {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }

    #[inline]
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'s, 'a>, Fallback> {
        self.out.push(b'[');
        Ok(Compound {
            ser: self,
            first: true,
            close: b"]",
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'s, 'a>, Fallback> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'s, 'a>, Fallback> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'s, 'a>, Fallback> {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.extend_from_slice(b":[");
        Ok(Compound {
            ser: self,
            first: true,
            close: b"]}",
        })
    }

    #[inline]
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'s, 'a>, Fallback> {
        self.out.push(b'{');
        Ok(Compound {
            ser: self,
            first: true,
            close: b"}",
        })
    }

    #[inline]
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Compound<'s, 'a>, Fallback> {
        // serde_json's `RawValue` (and arbitrary-precision numbers) are
        // written by serde_json itself.
        if name.starts_with("$serde_json::private::") {
            return Err(Fallback);
        }
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'s, 'a>, Fallback> {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.extend_from_slice(b":{");
        Ok(Compound {
            ser: self,
            first: true,
            close: b"}}",
        })
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = Fallback;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fallback> {
        self.comma();
        value.serialize(&mut *self.ser)
    }

    #[inline]
    fn end(self) -> Result<(), Fallback> {
        extend(self.ser.out, self.close);
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = Fallback;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fallback> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Fallback> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Fallback;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fallback> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Fallback> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Fallback;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fallback> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<(), Fallback> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Fallback;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Fallback> {
        self.comma();
        key.serialize(KeySerializer {
            out: &mut *self.ser.out,
        })?;
        self.ser.out.push(b':');
        Ok(())
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fallback> {
        value.serialize(&mut *self.ser)
    }

    #[inline]
    fn end(self) -> Result<(), Fallback> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Fallback;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Fallback> {
        self.comma();
        string(self.ser.out, key);
        self.ser.out.push(b':');
        value.serialize(&mut *self.ser)
    }

    #[inline]
    fn end(self) -> Result<(), Fallback> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Fallback;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Fallback> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }

    fn end(self) -> Result<(), Fallback> {
        ser::SerializeSeq::end(self)
    }
}

/// A map key: strings (and string-like unit variants and newtypes) are
/// written here; serde_json quotes or refuses the rest.
struct KeySerializer<'a> {
    out: &'a mut Vec<u8>,
}

macro_rules! fall_back {
    ($($method:ident($($arg:ty),*))*) => {
        $(
            fn $method(self, $(_: $arg),*) -> Result<(), Fallback> {
                Err(Fallback)
            }
        )*
    };
}

impl ser::Serializer for KeySerializer<'_> {
    type Ok = ();
    type Error = Fallback;
    type SerializeSeq = ser::Impossible<(), Fallback>;
    type SerializeTuple = ser::Impossible<(), Fallback>;
    type SerializeTupleStruct = ser::Impossible<(), Fallback>;
    type SerializeTupleVariant = ser::Impossible<(), Fallback>;
    type SerializeMap = ser::Impossible<(), Fallback>;
    type SerializeStruct = ser::Impossible<(), Fallback>;
    type SerializeStructVariant = ser::Impossible<(), Fallback>;

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Fallback> {
        string(self.out, v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Fallback> {
        string(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Fallback> {
        string(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Fallback> {
        value.serialize(self)
    }

    fall_back! {
        serialize_bool(bool) serialize_i8(i8) serialize_i16(i16) serialize_i32(i32)
        serialize_i64(i64) serialize_i128(i128) serialize_u8(u8) serialize_u16(u16)
        serialize_u32(u32) serialize_u64(u64) serialize_u128(u128) serialize_f32(f32)
        serialize_f64(f64) serialize_bytes(&[u8]) serialize_none() serialize_unit()
        serialize_unit_struct(&'static str)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), Fallback> {
        Err(Fallback)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Fallback> {
        Err(Fallback)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Fallback> {
        Err(Fallback)
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Fallback> {
        Err(Fallback)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Fallback> {
        Err(Fallback)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Fallback> {
        Err(Fallback)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Fallback> {
        Err(Fallback)
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Fallback> {
        Err(Fallback)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Fallback> {
        Err(Fallback)
    }
}
