//! A strict JSON reader for the few shapes slipguard's records have: an object of
//! scalars and at most one flat nested object (metadata). Anything it cannot vouch for
//! (nesting deeper than that, arrays, an escape that makes a lone surrogate, a number that
//! does not fit, bytes that are not UTF-8, text after the value) is an error, and the
//! caller answers "unsure": the Python models decide. It never accepts what a JSON parser
//! would refuse.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Obj(Vec<(Cow<'a, str>, Value<'a>)>),
}

pub struct Unsure;

type R<T> = Result<T, Unsure>;

const MAX_DEPTH: usize = 2; // the record's object, and a flat object inside it

pub fn parse(text: &[u8]) -> R<Vec<(Cow<'_, str>, Value<'_>)>> {
    let mut p = Parser { s: text, i: 0 };
    p.ws();
    let top = match p.value(0)? {
        Value::Obj(fields) => fields,
        _ => return Err(Unsure),
    };
    p.ws();
    if p.i != p.s.len() {
        return Err(Unsure);
    }
    Ok(top)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> R<u8> {
        self.s.get(self.i).copied().ok_or(Unsure)
    }

    fn lit(&mut self, word: &[u8]) -> R<()> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    fn value(&mut self, depth: usize) -> R<Value<'a>> {
        match self.peek()? {
            b'{' => {
                if depth >= MAX_DEPTH {
                    return Err(Unsure);
                }
                self.object(depth + 1)
            }
            b'"' => Ok(Value::Str(self.string()?)),
            b't' => self.lit(b"true").map(|_| Value::Bool(true)),
            b'f' => self.lit(b"false").map(|_| Value::Bool(false)),
            b'n' => self.lit(b"null").map(|_| Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Unsure), // arrays, and anything that is not JSON
        }
    }

    fn object(&mut self, depth: usize) -> R<Value<'a>> {
        self.i += 1; // {
        let mut fields = Vec::new();
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(Value::Obj(fields));
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return Err(Unsure);
            }
            let key = self.string()?;
            self.ws();
            if self.peek()? != b':' {
                return Err(Unsure);
            }
            self.i += 1;
            self.ws();
            let value = self.value(depth)?;
            fields.push((key, value));
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(Value::Obj(fields));
                }
                _ => return Err(Unsure),
            }
        }
    }

    fn string(&mut self) -> R<Cow<'a, str>> {
        self.i += 1; // "
        let start = self.i;
        // The common case: no escape, borrowed as it is.
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'"' => {
                    let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| Unsure)?;
                    self.i += 1;
                    return Ok(Cow::Borrowed(text));
                }
                b'\\' => break,
                c if c < 0x20 => return Err(Unsure),
                _ => self.i += 1,
            }
        }
        let mut out = String::from(std::str::from_utf8(&self.s[start..self.i]).map_err(|_| Unsure)?);
        loop {
            let run = self.i;
            while self.i < self.s.len() && !matches!(self.s[self.i], b'"' | b'\\') {
                if self.s[self.i] < 0x20 {
                    return Err(Unsure);
                }
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[run..self.i]).map_err(|_| Unsure)?);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                _ => {
                    self.i += 1; // backslash
                    let c = self.peek()?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                self.lit(b"\\u")?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(Unsure);
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(Unsure); // a lone low surrogate
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code).ok_or(Unsure)?);
                        }
                        _ => return Err(Unsure),
                    }
                }
            }
        }
    }

    fn hex4(&mut self) -> R<u32> {
        let digits = self.s.get(self.i..self.i + 4).ok_or(Unsure)?;
        let text = std::str::from_utf8(digits).map_err(|_| Unsure)?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Unsure);
        }
        self.i += 4;
        u32::from_str_radix(text, 16).map_err(|_| Unsure)
    }

    fn number(&mut self) -> R<Value<'a>> {
        let start = self.i;
        if self.peek()? == b'-' {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return Err(Unsure),
        }
        let mut float = false;
        if self.i < self.s.len() && self.s[self.i] == b'.' {
            self.i += 1;
            if !matches!(self.peek()?, b'0'..=b'9') {
                return Err(Unsure);
            }
            self.digits();
            float = true;
        }
        if self.i < self.s.len() && matches!(self.s[self.i], b'e' | b'E') {
            self.i += 1;
            if matches!(self.peek()?, b'+' | b'-') {
                self.i += 1;
            }
            if !matches!(self.peek()?, b'0'..=b'9') {
                return Err(Unsure);
            }
            self.digits();
            float = true;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| Unsure)?;
        if float {
            let v: f64 = text.parse().map_err(|_| Unsure)?;
            if !v.is_finite() {
                return Err(Unsure);
            }
            Ok(Value::Float(v))
        } else {
            Ok(Value::Int(text.parse().map_err(|_| Unsure)?))
        }
    }

    fn digits(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
    }
}
