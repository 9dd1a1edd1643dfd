//! The tabular VAE of TabSyn (amazon-science/tabsyn, `tabsyn/vae/model.py`), layer for layer.
//!
//! Each row becomes `1 + n_tokens` tokens of width `d_token` (`n_tokens = n_num + n_cat`): a
//! learned [CLS] token, a token `x_i * W_i + b_i` per numeric column and `embedding + b_i` per
//! categorical column. Two Transformers map the tokens to the posterior mean and log-variance;
//! the decoder Transformer maps the latent tokens without [CLS] back, and per-column heads
//! reconstruct the values. The posterior means of the `n_tokens` feature tokens, flattened, are
//! the latent rows the diffusion model learns.

use tch::{Kind, Tensor};

use super::error::{ModelError, Result};
use super::layers::{
    Builder, LayerNorm, Linear, default_bound, int_vector, xavier_bound, zero_scalar,
};
use super::preprocess::Batch;

/// Sizes of the VAE.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeShape {
    pub n_num: i64,
    /// Vocabulary size of each categorical column.
    pub cardinalities: Vec<i64>,
    pub d_token: i64,
    pub n_heads: i64,
    pub ffn_dim: i64,
    pub n_layers: i64,
}

impl VaeShape {
    pub fn n_cat(&self) -> i64 {
        self.cardinalities.len() as i64
    }

    /// Feature tokens per row (without [CLS]).
    pub fn n_tokens(&self) -> i64 {
        self.n_num + self.n_cat()
    }

    /// Width of a flattened latent row: `n_tokens * d_token`.
    pub fn latent_dim(&self) -> i64 {
        self.n_tokens() * self.d_token
    }
}

/// Turns a row into tokens `[B, 1 + n_tokens, d_token]`.
#[derive(Debug)]
struct Tokenizer {
    /// `[1 + n_num, d]`: row 0 is the [CLS] token, row `1 + i` the numeric column i's `W_i`.
    weight: Tensor,
    /// `[n_tokens, d]`: per-feature bias (the [CLS] token has none).
    bias: Tensor,
    /// `[sum(K), d]`: all categorical embeddings, column i's rows start at `offsets[i]`.
    embeddings: Option<Tensor>,
    /// `[n_cat]` int64, not a parameter (derived from the manifest).
    offsets: Tensor,
}

impl Tokenizer {
    fn new(b: &mut Builder, s: &VaeShape) -> Result<Self> {
        // TabSyn: kaiming_uniform(a = sqrt(5)) on each, i.e. U(+-1/sqrt(d_token)).
        let bound = default_bound(s.d_token);
        let weight = b.uniform("weight", &[s.n_num + 1, s.d_token], bound)?;
        let bias = b.uniform("bias", &[s.n_tokens(), s.d_token], bound)?;
        let total: i64 = s.cardinalities.iter().sum();
        let embeddings = if total > 0 {
            Some(b.uniform("cat_embeddings", &[total, s.d_token], bound)?)
        } else {
            None
        };
        let mut offsets = Vec::with_capacity(s.cardinalities.len());
        let mut acc = 0;
        for &k in &s.cardinalities {
            offsets.push(acc);
            acc += k;
        }
        let offsets = int_vector(&offsets, weight.device())?;
        Ok(Self {
            weight,
            bias,
            embeddings,
            offsets,
        })
    }

    /// `num` `[B, n_num]` float, `cat` `[B, n_cat]` int64 -> `[B, 1 + n_tokens, d]`.
    fn forward(&self, num: &Tensor, cat: &Tensor) -> Tensor {
        let rows = num.size()[0];
        let ones = Tensor::ones([rows, 1], (Kind::Float, num.device()));
        let x_num = Tensor::cat(&[&ones, num], 1);
        let mut x = self.weight.unsqueeze(0) * x_num.unsqueeze(-1);
        if let Some(emb) = &self.embeddings {
            let idx = cat + self.offsets.unsqueeze(0);
            x = Tensor::cat(&[x, Tensor::embedding(emb, &idx, -1, false, false)], 1);
        }
        let d = self.weight.size()[1];
        let cls_bias = Tensor::zeros([1, d], (Kind::Float, num.device()));
        x + Tensor::cat(&[&cls_bias, &self.bias], 0).unsqueeze(0)
    }
}

/// Multi-head self-attention; an output projection only with more than one head (as TabSyn).
///
/// Unlike TabSyn, the key projection has no bias: a key bias adds the same amount to every
/// attention score of a query, which softmax ignores, so it has no effect and a gradient that
/// is pure rounding noise. Adam rescales that noise into full-size steps, which made two workers
/// and one worker drift apart on a parameter that does nothing.
#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Option<Linear>,
    n_heads: i64,
}

impl Attention {
    fn new(b: &mut Builder, d: i64, n_heads: i64) -> Result<Self> {
        Ok(Self {
            q: Linear::zero_bias(&mut b.sub("w_q"), d, d)?,
            k: Linear::no_bias(&mut b.sub("w_k"), d, d)?,
            v: Linear::zero_bias(&mut b.sub("w_v"), d, d)?,
            out: if n_heads > 1 {
                Some(Linear::zero_bias(&mut b.sub("w_out"), d, d)?)
            } else {
                None
            },
            n_heads,
        })
    }

    /// `[B, T, d] -> [B, T, d]`.
    fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (rows, tokens, d) = (size[0], size[1], size[2]);
        let h = self.n_heads;
        let dh = d / h;
        let heads = |t: Tensor| t.reshape([rows, tokens, h, dh]).transpose(1, 2);
        let q = heads(self.q.forward(x));
        let k = heads(self.k.forward(x));
        let v = heads(self.v.forward(x));
        let att = (q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt()).softmax(-1, Kind::Float);
        let y = att.matmul(&v).transpose(1, 2).reshape([rows, tokens, d]);
        match &self.out {
            Some(out) => out.forward(&y),
            None => y,
        }
    }
}

/// One pre-norm block: `x + Attn(Norm0(x))`, then `x + FFN(Norm1(x))` with a ReLU FFN. The first
/// block has no `Norm0` (its input is the tokenizer output), as in TabSyn.
#[derive(Debug)]
struct Block {
    norm0: Option<LayerNorm>,
    attention: Attention,
    norm1: LayerNorm,
    linear0: Linear,
    linear1: Linear,
}

/// A stack of [`Block`]s over `[B, T, d]` tokens (TabSyn's `Transformer`; its unused head and
/// last normalisation are left out).
#[derive(Debug)]
struct Transformer {
    blocks: Vec<Block>,
}

impl Transformer {
    fn new(b: &mut Builder, s: &VaeShape) -> Result<Self> {
        let mut blocks = Vec::new();
        for i in 0..s.n_layers {
            let mut lb = b.sub(i);
            blocks.push(Block {
                norm0: if i > 0 {
                    Some(LayerNorm::new(&mut lb.sub("norm0"), s.d_token)?)
                } else {
                    None
                },
                attention: Attention::new(&mut lb.sub("attention"), s.d_token, s.n_heads)?,
                norm1: LayerNorm::new(&mut lb.sub("norm1"), s.d_token)?,
                linear0: Linear::new(&mut lb.sub("linear0"), s.d_token, s.ffn_dim)?,
                linear1: Linear::new(&mut lb.sub("linear1"), s.ffn_dim, s.d_token)?,
            });
        }
        Ok(Self { blocks })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = x.shallow_clone();
        for blk in &self.blocks {
            let r = match &blk.norm0 {
                Some(n) => n.forward(&x),
                None => x.shallow_clone(),
            };
            x = &x + blk.attention.forward(&r);
            let r = blk.norm1.forward(&x);
            x = &x + blk.linear1.forward(&blk.linear0.forward_wide(&r).relu());
        }
        x
    }
}

/// Per-column heads: numeric value = sum over the token of `h * w_i` (no bias, as TabSyn),
/// categorical logits = `Linear(d_token, K_i)`.
#[derive(Debug)]
struct Reconstructor {
    /// `[n_num, d]`; absent without numeric columns (a parameter with no elements would get no
    /// gradient, and every rank must hand the same gradient list to the all-reduce).
    num_weight: Option<Tensor>,
    cat_heads: Vec<Linear>,
    n_num: i64,
}

impl Reconstructor {
    fn new(b: &mut Builder, s: &VaeShape) -> Result<Self> {
        let gain = 1.0 / 2f64.sqrt();
        let num_weight = if s.n_num > 0 {
            Some(b.uniform(
                "num_weight",
                &[s.n_num, s.d_token],
                xavier_bound(s.d_token, s.n_num, gain),
            )?)
        } else {
            None
        };
        let mut cat_heads = Vec::new();
        for (i, &k) in s.cardinalities.iter().enumerate() {
            cat_heads.push(Linear::xavier(
                &mut b.sub(format!("cat.{i}")),
                s.d_token,
                k,
                gain,
            )?);
        }
        Ok(Self {
            num_weight,
            cat_heads,
            n_num: s.n_num,
        })
    }

    /// `h` `[B, n_tokens, d]` -> numeric `[B, n_num]` and one `[B, K_i]` logit tensor per
    /// categorical column.
    fn forward(&self, h: &Tensor) -> (Tensor, Vec<Tensor>) {
        let num = match &self.num_weight {
            Some(w) => (h.narrow(1, 0, self.n_num) * w.unsqueeze(0)).sum_dim_intlist(
                -1,
                false,
                Kind::Float,
            ),
            None => Tensor::zeros([h.size()[0], 0], (Kind::Float, h.device())),
        };
        let cats = self
            .cat_heads
            .iter()
            .enumerate()
            .map(|(i, head)| head.forward(&h.select(1, self.n_num + i as i64)))
            .collect();
        (num, cats)
    }
}

/// Losses of one VAE forward pass.
#[derive(Debug)]
pub struct VaeLoss {
    /// `mse + ce + beta * kl`, a scalar tensor to call `backward` on.
    pub total: Tensor,
    /// Mean squared error over all numeric values (0 without numeric columns).
    pub mse: f64,
    /// Cross-entropy averaged over categorical columns (0 without categorical columns).
    pub ce: f64,
    /// KL divergence to N(0, I), averaged over rows, tokens (with [CLS]) and token dimensions.
    pub kl: f64,
    /// The posterior means of the feature tokens, flattened `[B, n_tokens * d_token]` (what
    /// [`Vae::encode_mean`] gives), still in the graph: joint training feeds them to the
    /// denoiser without a second encoder pass.
    pub mean: Tensor,
}

/// The VAE. Its parameters are registered with the [`Builder`] it is built with.
#[derive(Debug)]
pub struct Vae {
    shape: VaeShape,
    tokenizer: Tokenizer,
    encoder_mu: Transformer,
    encoder_logvar: Transformer,
    decoder: Transformer,
    reconstructor: Reconstructor,
}

impl Vae {
    pub(crate) fn new(b: &mut Builder, shape: VaeShape) -> Result<Self> {
        if shape.d_token % shape.n_heads != 0 {
            return Err(ModelError::InvalidConfig {
                key: "model.d_token",
                reason: format!(
                    "{} is not a multiple of model.n_heads ({})",
                    shape.d_token, shape.n_heads
                ),
            });
        }
        Ok(Self {
            tokenizer: Tokenizer::new(&mut b.sub("tokenizer"), &shape)?,
            encoder_mu: Transformer::new(&mut b.sub("encoder_mu"), &shape)?,
            encoder_logvar: Transformer::new(&mut b.sub("encoder_logvar"), &shape)?,
            decoder: Transformer::new(&mut b.sub("decoder"), &shape)?,
            reconstructor: Reconstructor::new(&mut b.sub("reconstructor"), &shape)?,
            shape,
        })
    }

    pub fn shape(&self) -> &VaeShape {
        &self.shape
    }

    /// Checks a batch's column counts against the VAE's.
    fn check(&self, batch: &Batch) -> Result<()> {
        let rows = batch.rows();
        for (name, t, cols) in [
            ("batch.num", &batch.num, self.shape.n_num),
            ("batch.cat", &batch.cat, self.shape.n_cat()),
        ] {
            if t.size() != [rows, cols] {
                return Err(ModelError::ShapeMismatch {
                    tensor: name.into(),
                    expected: vec![rows, cols],
                    found: t.size(),
                });
            }
        }
        Ok(())
    }

    /// Loss on a batch. With `eps` (`[B, 1 + n_tokens, d_token]` standard normals) the latent
    /// is reparameterised, `z = mu + eps * exp(logvar / 2)` (training); without, `z = mu`
    /// (validation). The noise comes from the caller so it is seeded per row.
    pub fn loss(&self, batch: &Batch, beta: f64, eps: Option<&Tensor>) -> Result<VaeLoss> {
        self.check(batch)?;
        let x = self.tokenizer.forward(&batch.num, &batch.cat);
        let mu = self.encoder_mu.forward(&x);
        let logvar = self.encoder_logvar.forward(&x);
        let z = match eps {
            Some(eps) => {
                if eps.size() != mu.size() {
                    return Err(ModelError::ShapeMismatch {
                        tensor: "reparameterisation noise".into(),
                        expected: mu.size(),
                        found: eps.size(),
                    });
                }
                &mu + eps * (&logvar * 0.5).exp()
            }
            None => mu.shallow_clone(),
        };
        let h = self.decoder.forward(&z.narrow(1, 1, self.shape.n_tokens()));
        let (num, cats) = self.reconstructor.forward(&h);
        let device = batch.num.device();
        let mse = if self.shape.n_num > 0 {
            (&batch.num - num).square().mean(Kind::Float)
        } else {
            zero_scalar(device)
        };
        let ce = if cats.is_empty() {
            zero_scalar(device)
        } else {
            let n = cats.len() as f64;
            let mut sum = zero_scalar(device);
            for (i, logits) in cats.iter().enumerate() {
                sum += logits.cross_entropy_for_logits(&batch.cat.select(1, i as i64));
            }
            sum / n
        };
        let kl = ((&logvar + 1.0) - mu.square() - logvar.exp()).mean(Kind::Float) * -0.5;
        let total = &mse + &ce + &kl * beta;
        let parts: Vec<f64> = Vec::try_from(
            Tensor::f_stack(&[&mse, &ce, &kl], 0)?
                .f_detach()?
                .f_to_kind(Kind::Double)?,
        )?;
        let rows = batch.rows();
        Ok(VaeLoss {
            total,
            mse: parts[0],
            ce: parts[1],
            kl: parts[2],
            mean: mu
                .narrow(1, 1, self.shape.n_tokens())
                .reshape([rows, self.shape.latent_dim()]),
        })
    }

    /// Posterior means of the feature tokens, flattened: `[B, n_tokens * d_token]`.
    pub fn encode_mean(&self, batch: &Batch) -> Result<Tensor> {
        self.check(batch)?;
        let x = self.tokenizer.forward(&batch.num, &batch.cat);
        let mu = self.encoder_mu.forward(&x);
        let rows = batch.rows();
        Ok(mu
            .narrow(1, 1, self.shape.n_tokens())
            .reshape([rows, self.shape.latent_dim()]))
    }

    /// Latent rows `[B, n_tokens * d_token]` -> numeric values `[B, n_num]` (normal scores) and
    /// categorical codes `[B, n_cat]` int64 (argmax of the logits).
    pub fn decode(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let size = z.size();
        if size.len() != 2 || size[1] != self.shape.latent_dim() {
            return Err(ModelError::ShapeMismatch {
                tensor: "latent rows".into(),
                expected: vec![size.first().copied().unwrap_or(0), self.shape.latent_dim()],
                found: size,
            });
        }
        let rows = size[0];
        let tokens = z.reshape([rows, self.shape.n_tokens(), self.shape.d_token]);
        let h = self.decoder.forward(&tokens);
        let (num, cats) = self.reconstructor.forward(&h);
        let codes = if cats.is_empty() {
            Tensor::zeros([rows, 0], (Kind::Int64, z.device()))
        } else {
            let argmax: Vec<Tensor> = cats.iter().map(|l| l.argmax(-1, false)).collect();
            Tensor::stack(&argmax, 1)
        };
        Ok((num, codes))
    }
}
