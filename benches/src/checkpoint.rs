//! A safetensors-style fp16 checkpoint, and the edits a training run makes to one.
//!
//! The layout of the format (<https://github.com/huggingface/safetensors>): an 8-byte
//! little-endian header length `N`, `N` bytes of JSON (`{"__metadata__": {...}, "<tensor>":
//! {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ...}`, padded with spaces to a
//! multiple of 8), then the tensors back to back, `data_offsets` counting from the end of the
//! header. The tensors are those of a Llama-style model with TinyLlama-1.1B's shapes (hidden
//! 2048, MLP 5632, 4 KV heads of 64, vocabulary 32,000): at 20 layers, 2.02 GB. Their values are
//! [`super::fp16`]'s N(0, 0.02²), written on all cores; every byte is a function of the seed.
//!
//! The edits: [`overwrite`] writes new values over whole tensors and row ranges within tensors
//! picked by a seed (fine-tuning some layers), [`insert_in_header`] adds a metadata entry to the
//! JSON header, which shifts every tensor (saving the checkpoint with one more key).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use testkit::gen::Rng;

/// One tensor as the header lists it; offsets from the start of the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

impl Tensor {
    pub fn bytes(&self) -> u64 {
        self.end - self.begin
    }

    /// Bytes of one row (the first dimension's step).
    fn row_bytes(&self) -> u64 {
        2 * self.shape.iter().skip(1).product::<u64>()
    }
}

/// A parsed header: where the data starts in the file, and the tensors by offset.
#[derive(Clone, Debug)]
pub struct Header {
    pub data_start: u64,
    pub tensors: Vec<Tensor>,
}

/// The shape of the model: how many decoder layers, and the vocabulary size.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    pub layers: u64,
    pub vocab: u64,
}

const HIDDEN: u64 = 2048;
const MLP: u64 = 5632;
const KV: u64 = 256;

impl Model {
    /// 20 layers and a 32,000-token vocabulary at scale 1 (2.02 GB); both scale linearly, with
    /// at least one layer.
    pub fn scaled(scale: f64) -> Model {
        Model {
            layers: ((20.0 * scale).round() as u64).max(1),
            vocab: (((32_000.0 * scale) / 64.0).round() as u64).max(1) * 64,
        }
    }

    /// The tensors in file order: embeddings, each layer's attention, MLP and norms, the final
    /// norm, the output head.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_owned(),
            vec![self.vocab, HIDDEN],
        )];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            for (name, shape) in [
                ("self_attn.q_proj", [HIDDEN, HIDDEN]),
                ("self_attn.k_proj", [KV, HIDDEN]),
                ("self_attn.v_proj", [KV, HIDDEN]),
                ("self_attn.o_proj", [HIDDEN, HIDDEN]),
                ("mlp.gate_proj", [MLP, HIDDEN]),
                ("mlp.up_proj", [MLP, HIDDEN]),
                ("mlp.down_proj", [HIDDEN, MLP]),
            ] {
                out.push((format!("{p}.{name}.weight"), shape.to_vec()));
            }
            out.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        }
        out.push(("model.norm.weight".to_owned(), vec![HIDDEN]));
        out.push(("lm_head.weight".to_owned(), vec![self.vocab, HIDDEN]));
        out
    }

    /// Bytes of tensor data (the file adds its header, a few KB).
    pub fn data_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, shape)| 2 * shape.iter().product::<u64>())
            .sum()
    }
}

/// Writes the checkpoint of `model` to `path` (a new file) with values for `seed`, on all
/// cores; returns its size.
pub fn write(path: &Path, model: Model, seed: u64) -> io::Result<u64> {
    let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for (name, shape) in model.tensors() {
        let len = 2 * shape.iter().product::<u64>();
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        json.push_str(&format!(
            r#","{name}":{{"dtype":"F16","shape":[{}],"data_offsets":[{offset},{}]}}"#,
            dims.join(","),
            offset + len
        ));
        offset += len;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let data_start = 8 + json.len() as u64;
    let file = File::create(path)?;
    file.set_len(data_start + offset)?;
    file.write_all_at(&(json.len() as u64).to_le_bytes(), 0)?;
    file.write_all_at(json.as_bytes(), 8)?;
    super::fp16::write_at(&file, data_start, offset, seed)?;
    Ok(data_start + offset)
}

/// Reads and checks the header of the checkpoint at `path`.
pub fn read_header(path: &Path) -> io::Result<Header> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let (json, data_start) = read_json(path)?;
    let value: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| invalid(format!("{}: header: {e}", path.display())))?;
    let map = value
        .as_object()
        .ok_or_else(|| invalid(format!("{}: header is not an object", path.display())))?;
    let mut tensors = Vec::new();
    for (name, t) in map.iter().filter(|(name, _)| *name != "__metadata__") {
        let nums = |key: &str| -> Option<Vec<u64>> {
            t.get(key)?.as_array()?.iter().map(|v| v.as_u64()).collect()
        };
        let (Some(shape), Some(offsets)) = (nums("shape"), nums("data_offsets")) else {
            return Err(invalid(format!(
                "{}: tensor {name}: bad entry",
                path.display()
            )));
        };
        let [begin, end] = offsets[..] else {
            return Err(invalid(format!("{}: {name}: data_offsets", path.display())));
        };
        tensors.push(Tensor {
            name: name.clone(),
            shape,
            begin,
            end,
        });
    }
    tensors.sort_by_key(|t| t.begin);
    Ok(Header {
        data_start,
        tensors,
    })
}

/// The JSON header's bytes and the offset of the data section.
fn read_json(path: &Path) -> io::Result<(Vec<u8>, u64)> {
    let mut file = File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: header length {len}", path.display()),
        ));
    }
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json)?;
    Ok((json, 8 + len))
}

/// What [`overwrite`] changed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overwritten {
    pub bytes: u64,
    /// Tensors rewritten whole.
    pub whole: usize,
    /// Row ranges rewritten inside other tensors.
    pub regions: usize,
}

/// Writes new fp16 values over `fraction` of the tensor data of the checkpoint at `path`, in
/// place: tensors of 1 MB or more, picked by `seed`, each rewritten whole (when it fits in what
/// is left to write, one time in two) or in a seeded range of whole rows. The size stays the
/// same (rsync's quick check then relies on the mtime alone).
pub fn overwrite(path: &Path, fraction: f64, seed: u64) -> io::Result<Overwritten> {
    let header = read_header(path)?;
    let total: u64 = header.tensors.iter().map(Tensor::bytes).sum();
    let mut left = ((total as f64 * fraction) as u64) & !1;
    let mut candidates: Vec<&Tensor> = header
        .tensors
        .iter()
        .filter(|t| t.bytes() >= 1 << 20)
        .collect();
    let file = File::options().write(true).open(path)?;
    let mut rng = Rng::new(seed);
    let mut done = Overwritten::default();
    while left > 0 && !candidates.is_empty() {
        let t = candidates.swap_remove(rng.below(candidates.len()));
        let (at, len) = if t.bytes() <= left && rng.below(2) == 0 {
            done.whole += 1;
            (0, t.bytes())
        } else {
            // 10–60% of the tensor, in whole rows, capped by what is left.
            let row = t.row_bytes();
            let share = 0.1 + 0.5 * rng.unit();
            let rows = ((t.bytes() as f64 * share) as u64 / row).max(1);
            let len = (rows * row).min(left);
            let first_row = rng.below(((t.bytes() - len) / row + 1) as usize) as u64;
            done.regions += 1;
            (first_row * row, len)
        };
        let offset = header.data_start + t.begin + at;
        super::fp16::write_at(&file, offset, len, rng.next_u64())?;
        left -= len;
        done.bytes += len;
    }
    file.sync_data()?;
    Ok(done)
}

/// Rewrites the checkpoint at `path` with a metadata entry of exactly `bytes` bytes (at least
/// 16) added at the front of its JSON header, so every tensor moves by `bytes`; a new file
/// renamed over the old one, as a program saving a checkpoint does. `tag` names the entry (one
/// per call).
pub fn insert_in_header(path: &Path, bytes: usize, tag: u64) -> io::Result<()> {
    let (json, data_start) = read_json(path)?;
    const AT: &[u8] = br#"{"__metadata__":{"#;
    if !json.starts_with(AT) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: header does not start with __metadata__",
                path.display()
            ),
        ));
    }
    let key = format!(r#""bench_edit_{tag}":""#);
    assert!(
        bytes >= key.len() + 2,
        "insert_in_header: {bytes} bytes is too few"
    );
    let mut fill = vec![0u8; bytes - key.len() - 2];
    let mut rng = Rng::new(tag);
    fill.iter_mut()
        .for_each(|b| *b = b"0123456789abcdef"[rng.below(16)]);
    let mut entry = key.into_bytes();
    entry.extend_from_slice(&fill);
    entry.extend_from_slice(b"\",");
    let mut new_json = json;
    new_json.splice(AT.len()..AT.len(), entry);

    let tmp = path.with_extension("tmp");
    {
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        out.write_all(&(new_json.len() as u64).to_le_bytes())?;
        out.write_all(&new_json)?;
        let mut out = out.into_inner()?;
        let mut old = File::open(path)?;
        io::Seek::seek(&mut old, io::SeekFrom::Start(data_start))?;
        io::copy(&mut old, &mut out)?;
        out.sync_data()?;
    }
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_edits_keep_it_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let model = Model {
            layers: 1,
            vocab: 64,
        };
        let len = write(&path, model, 7).unwrap();
        let h = read_header(&path).unwrap();
        assert_eq!(h.data_start % 8, 0);
        assert_eq!(len, h.data_start + model.data_bytes());
        assert_eq!(h.tensors.len(), model.tensors().len());
        assert_eq!(h.tensors[0].name, "model.embed_tokens.weight");
        assert!(h.tensors.windows(2).all(|w| w[0].end == w[1].begin));

        let before = fs::read(&path).unwrap();
        let done = overwrite(&path, 0.1, 3).unwrap();
        let after = fs::read(&path).unwrap();
        assert_eq!(before.len(), after.len());
        let changed_pairs = before
            .chunks(2)
            .zip(after.chunks(2))
            .filter(|(a, b)| a != b)
            .count() as u64;
        assert_eq!(done.bytes, (model.data_bytes() as f64 * 0.1) as u64 & !1);
        // Nearly every rewritten fp16 value differs from the old one.
        assert!(
            changed_pairs > done.bytes / 2 * 9 / 10,
            "{changed_pairs} {done:?}"
        );

        insert_in_header(&path, 100, 1).unwrap();
        let moved = read_header(&path).unwrap();
        assert_eq!(moved.data_start, h.data_start + 100);
        assert_eq!(moved.tensors, h.tensors);
        let shifted = fs::read(&path).unwrap();
        assert_eq!(shifted.len(), after.len() + 100);
        assert_eq!(
            shifted[moved.data_start as usize..],
            after[h.data_start as usize..]
        );
    }
}
