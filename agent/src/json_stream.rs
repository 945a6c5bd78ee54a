//! JSON values one after another on a byte stream (the messaging protocol of amoc's demo,
//! spoken by the demo server and the messaging scenario alike).

use serde_json::Value;

/// Splits complete JSON values off the front of `buf`; `Err` on bad JSON.
pub fn decode_all(buf: &mut Vec<u8>) -> Result<Vec<Value>, serde_json::Error> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    let mut consumed = 0;
    loop {
        match stream.next() {
            Some(Ok(v)) => {
                out.push(v);
                consumed = stream.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => return Err(e),
            None => {
                consumed = buf.len();
                break;
            }
        }
    }
    buf.drain(..consumed);
    Ok(out)
}
