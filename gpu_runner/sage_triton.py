"""SageAttention's 8-bit attention in Triton, for AVP_ATTENTION=sage where diffusers cannot run it itself.

Adapted from SageAttention 1.0.6 (https://github.com/thu-ml/SageAttention; Copyright (c) 2024 Jintao Zhang,
Haofeng Huang, Tsinghua University; BSD 3-Clause License, whose notice follows) and fixed: 1.0.6's non-causal kernel
loads the keys past the sequence's end as zeros and leaves them in the softmax at logit 0, so wherever the keys are
not a multiple of 64 long (every LTX-2 shape: 2352 video tokens at 49 frames, 51 audio tokens) each missing key
takes a share of the weights. On 51 random audio keys that is a 13% error (16 missing at 2352 tokens: 0.4%). Here
they are masked out of the softmax. Otherwise the same scheme: keys smoothed (their mean over the tokens taken
off, which leaves every softmax as it was), queries quantised to int8 per block of 128 tokens and keys per 64 (one
scale each), QK^T in int8, the softmax in float32, PV in fp16.

Only what LTX-2 uses: no mask, not causal, (batch, tokens, heads, head dim) tensors, head dims 64 and 128.

    Copyright (c) 2024 by SageAttention team. All rights reserved.
    Redistribution and use in source and binary forms, with or without modification, are permitted provided that
    the following conditions are met: 1. Redistributions of source code must retain the above copyright notice,
    this list of conditions and the following disclaimer. 2. Redistributions in binary form must reproduce the above
    copyright notice, this list of conditions and the following disclaimer in the documentation and/or other
    materials provided with the distribution. 3. Neither the name of the copyright holder nor the names of its
    contributors may be used to endorse or promote products derived from this software without specific prior
    written permission. THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS
    OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A
    PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY
    DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO,
    PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
    CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR
    OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

QUERY_BLOCK, KEY_BLOCK = 128, 64  # tokens per int8 scale, and the attention kernel's tiles
HEAD_DIMS = (64, 128)
LOG2_E = 1.44269504  # the softmax runs in base 2: the queries' scale carries log2(e)


@triton.jit
def _quantise(
    Input, Output, Scale, tokens,
    stride_iz, stride_ih, stride_in, stride_oz, stride_oh, stride_on, stride_sz, stride_sh,
    scale_by, C: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One block of BLOCK tokens of one (batch, head) to int8, rounded half away from zero, with one scale."""
    block, head, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = (block * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    columns = tl.arange(0, C)
    inside = rows[:, None] < tokens
    x = tl.load(Input + batch * stride_iz + head * stride_ih + rows[:, None] * stride_in + columns[None, :], inside, 0)
    x = x.to(tl.float32) * scale_by
    scale = tl.maximum(tl.max(tl.abs(x)) / 127.0, 1e-12)  # an all-zero block quantises to zeros, not NaN
    x = x / scale
    x += 0.5 * tl.where(x >= 0, 1, -1)
    out = Output + batch * stride_oz + head * stride_oh + rows[:, None] * stride_on + columns[None, :]
    tl.store(out, x.to(tl.int8), inside)
    tl.store(Scale + batch * stride_sz + head * stride_sh + block, scale)


@triton.jit
def _attention(
    Q, K, V, Q_scale, K_scale, Out,
    stride_qz, stride_qh, stride_qn, stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn, stride_oz, stride_oh, stride_on,
    query_tokens, key_tokens, H: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """BLOCK_M queries of one (batch, head) against every key, online softmax over blocks of BLOCK_N keys."""
    block, head, batch = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    rows = (block * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    keys = tl.arange(0, BLOCK_N).to(tl.int64)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        Q + batch * stride_qz + head * stride_qh + rows[:, None] * stride_qn + dims[None, :],
        rows[:, None] < query_tokens,
        other=0,
    )
    q_scale = tl.load(Q_scale + (batch * H + head) * tl.cdiv(query_tokens, BLOCK_M) + block)
    K_ptrs = K + batch * stride_kz + head * stride_kh + keys[None, :] * stride_kn + dims[:, None]
    V_ptrs = V + batch * stride_vz + head * stride_vh + keys[:, None] * stride_vn + dims[None, :]
    K_scale_ptr = K_scale + (batch * H + head) * tl.cdiv(key_tokens, BLOCK_N)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in range(0, key_tokens, BLOCK_N):
        start = tl.multiple_of(start, BLOCK_N)
        present = keys[None, :] < key_tokens - start
        k = tl.load(K_ptrs, present, other=0)
        qk = tl.dot(q, k).to(tl.float32) * q_scale * tl.load(K_scale_ptr)
        qk = tl.where(present, qk, -1.0e6)  # the fix: keys past the end take no share of the softmax
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = tl.load(V_ptrs, keys[:, None] < key_tokens - start, other=0)
        acc += tl.dot(p.to(tl.float16), v, out_dtype=tl.float16)
        m_i = m_ij
        K_ptrs += BLOCK_N * stride_kn
        V_ptrs += BLOCK_N * stride_vn
        K_scale_ptr += 1
    out = Out + batch * stride_oz + head * stride_oh + rows[:, None] * stride_on + dims[None, :]
    tl.store(out, (acc / l_i[:, None]).to(Out.type.element_ty), rows[:, None] < query_tokens)


def _int8_blocks(x: torch.Tensor, block: int, scale_by: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, tokens, heads, dim) to int8 with one float32 scale per block of tokens of each (batch, head)."""
    batch, tokens, heads, dim = x.shape
    quantised = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scales = torch.empty((batch, heads, triton.cdiv(tokens, block)), dtype=torch.float32, device=x.device)
    _quantise[(triton.cdiv(tokens, block), heads, batch)](
        x, quantised, scales, tokens,
        x.stride(0), x.stride(2), x.stride(1),
        quantised.stride(0), quantised.stride(2), quantised.stride(1),
        scales.stride(0), scales.stride(1),
        scale_by, C=dim, BLOCK=block,
    )  # fmt: skip
    return quantised, scales


def sage_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Attention over (batch, tokens, heads, head dim) tensors of one dtype; the output in the query's dtype."""
    batch, query_tokens, heads, dim = query.shape
    key_tokens = key.shape[1]
    if dim not in HEAD_DIMS or key.shape[2] != heads:
        raise ValueError(f"sage attention takes head dims {HEAD_DIMS} and as many key as query heads, not {dim}")
    query, key = query.contiguous(), key - key.mean(dim=1, keepdim=True)
    q, q_scale = _int8_blocks(query, QUERY_BLOCK, (dim**-0.5 if scale is None else scale) * LOG2_E)
    k, k_scale = _int8_blocks(key, KEY_BLOCK, 1.0)
    value = value.to(torch.float16)
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    _attention[(triton.cdiv(query_tokens, QUERY_BLOCK), heads, batch)](
        q, k, value, q_scale, k_scale, out,
        q.stride(0), q.stride(2), q.stride(1), k.stride(0), k.stride(2), k.stride(1),
        value.stride(0), value.stride(2), value.stride(1), out.stride(0), out.stride(2), out.stride(1),
        query_tokens, key_tokens, heads,
        HEAD_DIM=dim, BLOCK_M=QUERY_BLOCK, BLOCK_N=KEY_BLOCK,
        num_warps=4 if dim == 64 else 8, num_stages=3 if dim == 64 else 4,
    )  # fmt: skip
    return out
