//! Binary property lists (`bplist00`): a header, the objects, an offset table and a 32-byte
//! trailer. Every offset, length and reference read from the file is checked against the
//! bytes present before it is followed; cycles are refused. An object referenced more than
//! once is built once when the builder's nodes are cheap to share (Python objects, as
//! `plistlib` shares them), but every use still counts against the node limit, so a small
//! file cannot stand for an exponential number of values.

use rustc_hash::FxHashMap as HashMap;

use super::{
    join_path, Builder, DecodeError, EncodeError, ErrorKind, Limits, Value, BINARY_MAGIC,
    MAX_INTEGER, MIN_INTEGER,
};

const TRAILER: usize = 32;
/// Seconds from 2001-01-01 to 0001-01-01 and to 10000-01-01: the years a datetime holds.
const FIRST_DATE: f64 = -63_113_904_000.0;
const LAST_DATE: f64 = 252_423_993_600.0;

struct Reader<'a> {
    data: &'a [u8],
    /// End of the object area: the offset table starts here.
    objects_end: usize,
    table: &'a [u8],
    offset_size: usize,
    ref_size: usize,
    count: usize,
    limits: Limits,
    /// Objects being read right now, to refuse cycles.
    active: Vec<bool>,
}

/// Objects already built: values (see `Builder::SHARES_NODES`) and dict keys.
struct Memo<N> {
    values: Vec<Option<Built<N>>>,
    keys: Vec<Option<N>>,
}

/// What an object stands for: its built node (kept when nodes are cheap to share), the
/// number of values it expands to and how deep it nests.
struct Built<N> {
    node: N,
    weight: u64,
    height: usize,
}

fn be(bytes: &[u8]) -> u64 {
    match *bytes {
        [a] => u64::from(a),
        [a, b] => u64::from(u16::from_be_bytes([a, b])),
        [a, b, c, d] => u64::from(u32::from_be_bytes([a, b, c, d])),
        _ => bytes.iter().fold(0, |n, b| (n << 8) | u64::from(*b)),
    }
}

impl<'a> Reader<'a> {
    fn err(kind: ErrorKind, at: usize, message: impl Into<String>) -> DecodeError {
        DecodeError::new(kind, at, message)
    }

    fn bytes(&self, at: usize, len: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        at.checked_add(len)
            .filter(|end| *end <= self.objects_end)
            .map(|end| &self.data[at..end])
            .ok_or_else(|| {
                Self::err(
                    ErrorKind::Syntax,
                    at,
                    format!(
                        "{what} of {len} bytes runs past the object area (ends at byte {})",
                        self.objects_end
                    ),
                )
            })
    }

    fn object_offset(&self, index: usize, at: usize) -> Result<usize, DecodeError> {
        if index >= self.count {
            return Err(Self::err(
                ErrorKind::Structure,
                at,
                format!(
                    "reference to object {index}, but the table has {}",
                    self.count
                ),
            ));
        }
        let entry = &self.table[index * self.offset_size..(index + 1) * self.offset_size];
        let offset = usize::try_from(be(entry)).unwrap_or(usize::MAX);
        if offset < BINARY_MAGIC.len() || offset >= self.objects_end {
            return Err(Self::err(
                ErrorKind::Structure,
                self.objects_end + index * self.offset_size,
                format!(
                    "object {index} is said to start at byte {offset}, outside the object area"
                ),
            ));
        }
        Ok(offset)
    }

    /// The length of a data, string, array or dict object, and where its content starts.
    fn length(&self, marker_at: usize, low: u8) -> Result<(usize, usize), DecodeError> {
        if low != 0x0F {
            return Ok((usize::from(low), marker_at + 1));
        }
        let int_at = marker_at + 1;
        let marker = self.bytes(int_at, 1, "length marker")?[0];
        if marker & 0xF0 != 0x10 || marker & 0x0F > 3 {
            return Err(Self::err(
                ErrorKind::Structure,
                int_at,
                format!("length marker 0x{marker:02X} is not an integer"),
            ));
        }
        let size = 1usize << (marker & 0x0F);
        let len = be(self.bytes(int_at + 1, size, "length")?);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Ok((len, int_at + 1 + size))
    }

    fn object<B: Builder>(
        &mut self,
        index: usize,
        depth: usize,
        at: usize,
        builder: &mut B,
        memo: &mut Memo<B::Node>,
    ) -> Result<Built<B::Node>, DecodeError> {
        if index >= self.count {
            return Err(Self::err(
                ErrorKind::Structure,
                at,
                format!(
                    "reference to object {index}, but the table has {}",
                    self.count
                ),
            ));
        }
        let deeper = |limits: &Limits, at: usize| {
            Self::err(
                ErrorKind::Limit,
                at,
                format!("nesting deeper than {} (the depth limit)", limits.max_depth),
            )
        };
        if let Some(b) = &memo.values[index] {
            if depth + b.height > self.limits.max_depth {
                return Err(deeper(&self.limits, at));
            }
            return Ok(Built {
                node: b.node.clone(),
                weight: b.weight,
                height: b.height,
            });
        }
        if self.active[index] {
            return Err(Self::err(
                ErrorKind::Structure,
                at,
                format!("object {index} contains itself (a reference cycle)"),
            ));
        }
        let offset = self.object_offset(index, at)?;
        let marker = self.data[offset];
        let (high, low) = (marker & 0xF0, marker & 0x0F);
        let fixed = |r: &Self, len: usize, what: &str| r.bytes(offset + 1, len, what);
        let f64_at = |r: &Self, what: &str| -> Result<f64, DecodeError> {
            Ok(f64::from_be_bytes(
                fixed(r, 8, what)?.try_into().unwrap_or([0; 8]),
            ))
        };
        let leaf = |node| Built {
            node,
            weight: 1,
            height: 0,
        };
        let built = match marker {
            0x00 => leaf(builder.null()),
            0x08 => leaf(builder.boolean(false)),
            0x09 => leaf(builder.boolean(true)),
            0x10..=0x14 => {
                let size = 1usize << low;
                let raw = fixed(self, size, "integer")?;
                let mut buf = [0u8; 16];
                buf[16 - size..].copy_from_slice(raw);
                let unsigned = u128::from_be_bytes(buf);
                let value = match size {
                    1..=4 => i128::try_from(unsigned).unwrap_or(0),
                    8 => i128::from(i64::from_be_bytes(raw.try_into().unwrap_or([0; 8]))),
                    _ => i128::from_be_bytes(buf),
                };
                if !(MIN_INTEGER..=MAX_INTEGER).contains(&value) {
                    return Err(Self::err(
                        ErrorKind::Structure,
                        offset,
                        format!("integer {value} is outside -2^63 to 2^64-1"),
                    ));
                }
                leaf(builder.integer(value))
            }
            0x22 => leaf(builder.real(f64::from(f32::from_be_bytes(
                fixed(self, 4, "real")?.try_into().unwrap_or([0; 4]),
            )))),
            0x23 => leaf(builder.real(f64_at(self, "real")?)),
            0x33 => {
                let secs = f64_at(self, "date")?;
                if !(FIRST_DATE..LAST_DATE).contains(&secs) {
                    return Err(Self::err(
                        ErrorKind::Structure,
                        offset,
                        format!("date {secs} seconds from 2001 is outside years 1-9999"),
                    ));
                }
                leaf(builder.date(secs))
            }
            _ if high == 0x80 => {
                let raw = fixed(self, usize::from(low) + 1, "UID")?;
                let mut buf = [0u8; 16];
                buf[16 - raw.len()..].copy_from_slice(raw);
                let uid = u64::try_from(u128::from_be_bytes(buf)).map_err(|_| {
                    Self::err(ErrorKind::Structure, offset, "UID does not fit in 64 bits")
                })?;
                leaf(builder.uid(uid))
            }
            _ if high == 0x40 => {
                let (len, start) = self.length(offset, low)?;
                leaf(builder.data(self.bytes(start, len, "data")?))
            }
            _ if high == 0x50 || high == 0x60 => {
                leaf(builder.string(&self.string(offset, high, low)?))
            }
            _ if high == 0xA0 || high == 0xD0 => {
                if depth + 1 > self.limits.max_depth {
                    return Err(deeper(&self.limits, offset));
                }
                let (n, start) = self.length(offset, low)?;
                let total = if high == 0xA0 { n } else { n.saturating_mul(2) };
                let refs =
                    self.bytes(start, total.saturating_mul(self.ref_size), "reference list")?;
                let ref_size = self.ref_size;
                let reference = |i: usize| {
                    usize::try_from(be(&refs[i * ref_size..(i + 1) * ref_size]))
                        .unwrap_or(usize::MAX)
                };
                self.active[index] = true;
                let mut weight: u64 = 1;
                let mut height = 0;
                let mut add = |w: u64, h: usize, limits: &Limits| {
                    weight = weight.saturating_add(w);
                    height = height.max(h);
                    if weight > limits.max_nodes as u64 {
                        Err(Self::err(
                            ErrorKind::Limit,
                            start,
                            format!(
                                "more than {} values (the node limit; shared references count each time they are used)",
                                limits.max_nodes
                            ),
                        ))
                    } else {
                        Ok(())
                    }
                };
                let node = if high == 0xA0 {
                    let mut array = builder.array_start(n);
                    for i in 0..n {
                        let item = self.object(reference(i), depth + 1, start, builder, memo)?;
                        add(item.weight, item.height, &self.limits)?;
                        builder.array_push(&mut array, item.node);
                    }
                    builder.array_end(array)
                } else {
                    let mut dict = builder.dict_start(n);
                    for i in 0..n {
                        let k = reference(i);
                        let key = self.key(k, start, builder, &mut memo.keys)?;
                        let value =
                            self.object(reference(n + i), depth + 1, start, builder, memo)?;
                        add(1, 0, &self.limits)?;
                        add(value.weight, value.height, &self.limits)?;
                        builder.dict_insert(&mut dict, key, value.node);
                    }
                    builder.dict_end(dict)
                };
                self.active[index] = false;
                Built {
                    node,
                    weight,
                    height: height + 1,
                }
            }
            _ => {
                return Err(Self::err(
                    ErrorKind::Structure,
                    offset,
                    format!("object marker 0x{marker:02X} is not a plist type"),
                ))
            }
        };
        // Reports reference the same scalars (false, 0, common strings) many times, and
        // containers are kept for sharing, as plistlib shares them.
        if B::SHARES_NODES || built.height == 0 {
            memo.values[index] = Some(Built {
                node: built.node.clone(),
                weight: built.weight,
                height: built.height,
            });
        }
        Ok(built)
    }

    /// A dictionary key: a string object. Keys repeat in every dict of a report, so each
    /// key object is checked and built once, then reused.
    fn key<B: Builder>(
        &mut self,
        index: usize,
        at: usize,
        builder: &mut B,
        keys: &mut [Option<B::Node>],
    ) -> Result<B::Node, DecodeError> {
        if let Some(Some(k)) = keys.get(index) {
            return Ok(k.clone());
        }
        let offset = self.object_offset(index, at)?;
        let marker = self.data[offset];
        let (high, low) = (marker & 0xF0, marker & 0x0F);
        if high != 0x50 && high != 0x60 {
            return Err(Self::err(
                ErrorKind::Structure,
                at,
                "dict key is not a string",
            ));
        }
        let node = builder.key(&self.string(offset, high, low)?);
        keys[index] = Some(node.clone());
        Ok(node)
    }

    fn string(
        &self,
        offset: usize,
        high: u8,
        low: u8,
    ) -> Result<std::borrow::Cow<'a, str>, DecodeError> {
        let (len, start) = self.length(offset, low)?;
        if high == 0x50 {
            let raw = self.bytes(start, len, "ASCII string")?;
            return match raw.is_ascii() {
                // SAFETY: ASCII bytes are valid UTF-8.
                true => Ok(std::borrow::Cow::Borrowed(unsafe {
                    std::str::from_utf8_unchecked(raw)
                })),
                false => {
                    let bad = raw.iter().position(|b| !b.is_ascii()).unwrap_or(0);
                    Err(Self::err(
                        ErrorKind::Encoding,
                        start + bad,
                        "byte in an ASCII string is not ASCII",
                    ))
                }
            };
        }
        let raw = self.bytes(start, len.saturating_mul(2), "UTF-16 string")?;
        let units = raw
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]));
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .map(std::borrow::Cow::Owned)
            .map_err(|_| {
                Self::err(
                    ErrorKind::Encoding,
                    start,
                    "UTF-16 string has an unpaired surrogate",
                )
            })
    }
}

pub(crate) fn decode<B: Builder>(
    data: &[u8],
    limits: &Limits,
    builder: &mut B,
) -> Result<B::Node, DecodeError> {
    if !data.starts_with(BINARY_MAGIC) {
        return Err(DecodeError::new(
            ErrorKind::Structure,
            0,
            "binary plist does not start with bplist00",
        ));
    }
    if data.len() < BINARY_MAGIC.len() + 1 + TRAILER {
        return Err(DecodeError::new(
            ErrorKind::Syntax,
            data.len(),
            format!(
                "binary plist of {} bytes is too short for its 32-byte trailer",
                data.len()
            ),
        ));
    }
    let trailer_at = data.len() - TRAILER;
    let t = &data[trailer_at..];
    let offset_size = usize::from(t[6]);
    let ref_size = usize::from(t[7]);
    let count = be(&t[8..16]);
    let top = be(&t[16..24]);
    let table_at = be(&t[24..32]);
    let bad = |at: usize, message: String| {
        Err(DecodeError::new(
            ErrorKind::Syntax,
            trailer_at + at,
            message,
        ))
    };
    if !(1..=8).contains(&offset_size) {
        return bad(6, format!("trailer offset size {offset_size} is not 1-8"));
    }
    if !(1..=8).contains(&ref_size) {
        return bad(7, format!("trailer reference size {ref_size} is not 1-8"));
    }
    let table_at = usize::try_from(table_at).unwrap_or(usize::MAX);
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let table_len = count.checked_mul(offset_size);
    match table_len.and_then(|l| table_at.checked_add(l)) {
        Some(end) if count > 0 && table_at > BINARY_MAGIC.len() && end <= trailer_at => {}
        _ => {
            return bad(
                8,
                format!("trailer claims {count} objects with an offset table at byte {table_at}, which the {} bytes present cannot hold", data.len()),
            )
        }
    }
    let top = usize::try_from(top).unwrap_or(usize::MAX);
    if top >= count {
        return bad(
            16,
            format!("top object {top} is not among the {count} objects"),
        );
    }
    let mut reader = Reader {
        data,
        objects_end: table_at,
        table: &data[table_at..table_at + count * offset_size],
        offset_size,
        ref_size,
        count,
        limits: *limits,
        active: vec![false; count],
    };
    let mut memo = Memo {
        values: std::iter::repeat_with(|| None).take(count).collect(),
        keys: std::iter::repeat_with(|| None).take(count).collect(),
    };
    Ok(reader.object(top, 0, trailer_at, builder, &mut memo)?.node)
}

// ---------------------------------------------------------------- writing

/// Scalars are written once and referenced wherever they repeat (keys above all), as
/// plistlib and Apple's writer do.
#[derive(Hash, PartialEq, Eq)]
enum Scalar<'v> {
    Str(&'v str),
    Int(i128),
    Real(u64),
    Bool(bool),
    Date(u64),
    Data(&'v [u8]),
    Uid(u64),
}

enum Obj<'v> {
    Str(&'v str),
    Leaf(&'v Value),
    Array(Vec<usize>),
    Dict(Vec<usize>, Vec<usize>),
}

struct Flattener<'v> {
    objects: Vec<Obj<'v>>,
    seen: HashMap<Scalar<'v>, usize>,
    sort_keys: bool,
}

impl<'v> Flattener<'v> {
    fn shared(&mut self, key: Scalar<'v>, obj: Obj<'v>) -> usize {
        if let Some(&i) = self.seen.get(&key) {
            return i;
        }
        self.objects.push(obj);
        let i = self.objects.len() - 1;
        self.seen.insert(key, i);
        i
    }

    fn add(&mut self, v: &'v Value, path: &dyn Fn() -> String) -> Result<usize, EncodeError> {
        let fail = |message: &str, overflow: bool| EncodeError {
            path: path(),
            message: message.into(),
            overflow,
        };
        Ok(match v {
            Value::String(s) => self.shared(Scalar::Str(s), Obj::Str(s)),
            Value::Integer(i) => {
                if !(MIN_INTEGER..=MAX_INTEGER).contains(i) {
                    return Err(fail(
                        &format!("{i} is outside the integers a plist holds"),
                        true,
                    ));
                }
                self.shared(Scalar::Int(*i), Obj::Leaf(v))
            }
            Value::Real(r) => self.shared(Scalar::Real(r.to_bits()), Obj::Leaf(v)),
            Value::Boolean(b) => self.shared(Scalar::Bool(*b), Obj::Leaf(v)),
            Value::Date(d) => self.shared(Scalar::Date(d.to_bits()), Obj::Leaf(v)),
            Value::Data(d) => self.shared(Scalar::Data(d), Obj::Leaf(v)),
            Value::Uid(u) => self.shared(Scalar::Uid(*u), Obj::Leaf(v)),
            Value::Null => return Err(fail("None cannot be written to a plist", false)),
            Value::Array(items) => {
                let at = self.objects.len();
                self.objects.push(Obj::Array(Vec::new()));
                let mut refs = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    refs.push(self.add(item, &|| join_path(path, &format!("[{i}]")))?);
                }
                self.objects[at] = Obj::Array(refs);
                at
            }
            Value::Dict(entries) => {
                let at = self.objects.len();
                self.objects.push(Obj::Dict(Vec::new(), Vec::new()));
                let mut order: Vec<&'v (String, Value)> = entries.iter().collect();
                if self.sort_keys {
                    order.sort_by(|a, b| a.0.cmp(&b.0));
                }
                let mut keys = Vec::with_capacity(order.len());
                let mut values = Vec::with_capacity(order.len());
                for (key, _) in &order {
                    keys.push(self.shared(Scalar::Str(key), Obj::Str(key)));
                }
                for (key, item) in &order {
                    values.push(self.add(item, &|| join_path(path, &format!(".{key}")))?);
                }
                self.objects[at] = Obj::Dict(keys, values);
                at
            }
        })
    }
}

fn size_for(n: u64) -> usize {
    match n {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFFFF_FFFF => 4,
        _ => 8,
    }
}

fn write_uint(out: &mut Vec<u8>, n: u64, size: usize) {
    out.extend_from_slice(&n.to_be_bytes()[8 - size..]);
}

/// A marker with its length in the low nibble, or 0xF followed by an integer object.
fn write_marker(out: &mut Vec<u8>, high: u8, len: usize) {
    if len < 15 {
        out.push(high | u8::try_from(len).unwrap_or(0));
    } else {
        out.push(high | 0x0F);
        write_int(out, i128::try_from(len).unwrap_or(i128::MAX));
    }
}

/// Integers as plistlib writes them: the smallest unsigned size that fits, 8-byte signed for
/// negatives, and 16 bytes for values from 2^63 up.
fn write_int(out: &mut Vec<u8>, i: i128) {
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    match i {
        0..=0xFF => {
            out.push(0x10);
            out.push(i as u8);
        }
        0x100..=0xFFFF => {
            out.push(0x11);
            out.extend_from_slice(&(i as u16).to_be_bytes());
        }
        0x1_0000..=0xFFFF_FFFF => {
            out.push(0x12);
            out.extend_from_slice(&(i as u32).to_be_bytes());
        }
        _ if i < 0 || i < (1 << 63) => {
            out.push(0x13);
            out.extend_from_slice(&(i as i64).to_be_bytes());
        }
        _ => {
            out.push(0x14);
            out.extend_from_slice(&i.to_be_bytes());
        }
    }
}

pub fn encode_binary(value: &Value, sort_keys: bool) -> Result<Vec<u8>, EncodeError> {
    let mut flat = Flattener {
        objects: Vec::new(),
        seen: HashMap::default(),
        sort_keys,
    };
    flat.add(value, &String::new)?;
    let count = flat.objects.len();
    let ref_size = size_for(count as u64);
    let mut out = Vec::with_capacity(count * 16 + 64);
    out.extend_from_slice(BINARY_MAGIC);
    let mut offsets = Vec::with_capacity(count);
    for obj in &flat.objects {
        offsets.push(out.len() as u64);
        match obj {
            Obj::Str(s) => {
                if s.is_ascii() {
                    write_marker(&mut out, 0x50, s.len());
                    out.extend_from_slice(s.as_bytes());
                } else {
                    let units: Vec<u16> = s.encode_utf16().collect();
                    write_marker(&mut out, 0x60, units.len());
                    for u in units {
                        out.extend_from_slice(&u.to_be_bytes());
                    }
                }
            }
            Obj::Leaf(v) => match v {
                Value::Integer(i) => write_int(&mut out, *i),
                Value::Real(r) => {
                    out.push(0x23);
                    out.extend_from_slice(&r.to_be_bytes());
                }
                Value::Boolean(b) => out.push(if *b { 0x09 } else { 0x08 }),
                Value::Date(d) => {
                    out.push(0x33);
                    out.extend_from_slice(&d.to_be_bytes());
                }
                Value::Data(d) => {
                    write_marker(&mut out, 0x40, d.len());
                    out.extend_from_slice(d);
                }
                Value::Uid(u) => {
                    let size = size_for(*u);
                    out.push(0x80 | u8::try_from(size - 1).unwrap_or(7));
                    write_uint(&mut out, *u, size);
                }
                _ => {}
            },
            Obj::Array(refs) => {
                write_marker(&mut out, 0xA0, refs.len());
                for r in refs {
                    write_uint(&mut out, *r as u64, ref_size);
                }
            }
            Obj::Dict(keys, values) => {
                write_marker(&mut out, 0xD0, keys.len());
                for r in keys.iter().chain(values) {
                    write_uint(&mut out, *r as u64, ref_size);
                }
            }
        }
    }
    let table_at = out.len() as u64;
    let offset_size = size_for(offsets.last().copied().unwrap_or(0));
    for o in offsets {
        write_uint(&mut out, o, offset_size);
    }
    out.extend_from_slice(&[0; 6]);
    out.push(u8::try_from(offset_size).unwrap_or(8));
    out.push(u8::try_from(ref_size).unwrap_or(8));
    out.extend_from_slice(&(count as u64).to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes());
    out.extend_from_slice(&table_at.to_be_bytes());
    Ok(out)
}
