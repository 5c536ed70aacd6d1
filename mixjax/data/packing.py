"""Packing token pieces into fixed [batch, seq] arrays with segment ids and positions.

Two layouts: `pack_stream` fills the batch row-major with no padding (training: every token is
data, a piece crossing a row end continues as a new segment on the next row); `pack_rows` puts
each piece whole into a row and pads the rest (validation: examples are not cut more than needed,
and only pieces that hold a loss target are packed, so every validation batch measures).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from mixjax.data.batch import PackedBatch

Piece = tuple[np.ndarray, np.ndarray, int]  # (tokens, loss_mask, domain index)


def _segments(piece_id_BxL: np.ndarray):
    """Segment ids (new id at every piece change and row start, 0 on padding) and positions."""
    batch, seq = piece_id_BxL.shape
    boundary = np.ones((batch, seq), bool)
    boundary[:, 1:] = piece_id_BxL[:, 1:] != piece_id_BxL[:, :-1]
    segment_ids = np.cumsum(boundary, axis=1, dtype=np.int32)
    column = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq))
    starts = np.maximum.accumulate(np.where(boundary, column, 0), axis=1)
    positions = column - starts
    padding = piece_id_BxL == 0
    segment_ids[padding] = 0
    positions[padding] = 0
    return segment_ids, positions.astype(np.int32)


def _assemble(flat_tokens, flat_mask, flat_domain, flat_piece, batch, seq, num_domains) -> PackedBatch:
    shape = (batch, seq)
    piece_id = flat_piece.reshape(shape)
    segment_ids, positions = _segments(piece_id)
    domain_ids = flat_domain.reshape(shape)
    loss_mask = flat_mask.reshape(shape)
    real = domain_ids >= 0
    tokens_per_domain = np.bincount(domain_ids[real], minlength=num_domains).astype(np.int64)
    loss_tokens = np.bincount(domain_ids[real & loss_mask], minlength=num_domains).astype(np.int64)
    return PackedBatch(
        tokens_BxL=flat_tokens.reshape(shape), segment_ids_BxL=segment_ids,
        positions_BxL=positions, loss_mask_BxL=loss_mask, domain_ids_BxL=domain_ids,
        tokens_per_domain=tokens_per_domain, loss_tokens_per_domain=loss_tokens)


def pack_stream(pieces: list[Piece], batch: int, seq: int, num_domains: int) -> PackedBatch:
    """Concatenate pieces row-major into [batch, seq]; the remainder (if any) is padding."""
    total = batch * seq
    lengths = np.fromiter((len(p[0]) for p in pieces), np.int64, len(pieces))
    used = int(lengths.sum())
    if used > total:
        raise ValueError(f"pieces hold {used} tokens, more than the batch's {total}")
    pad = total - used
    tokens = np.concatenate([p[0] for p in pieces] + [np.zeros(pad, np.int32)]).astype(np.int32)
    mask = np.concatenate([p[1] for p in pieces] + [np.zeros(pad, bool)]).astype(bool)
    domains = np.concatenate([np.repeat(np.array([p[2] for p in pieces], np.int32), lengths),
                              np.full(pad, -1, np.int32)])
    piece_id = np.concatenate([np.repeat(np.arange(1, len(pieces) + 1, dtype=np.int32), lengths),
                               np.zeros(pad, np.int32)])
    return _assemble(tokens, mask, domains, piece_id, batch, seq, num_domains)


def cut(tokens: np.ndarray, loss_mask: np.ndarray, seq: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Split an example longer than a row into row-sized pieces, keeping those that hold a loss
    target (a loss-masked token after the piece's first, which has nothing before it to predict
    it from): a long prompt's pieces would fill validation rows, and a bounded evaluation's first
    batches, with nothing to measure."""
    for start in range(0, len(tokens), seq):
        if loss_mask[start + 1:start + seq].any():
            yield tokens[start:start + seq], loss_mask[start:start + seq]


def first_target(loss_mask: np.ndarray) -> int | None:
    """Index of an example's first loss target (a loss-masked token after the first), or None."""
    hits = np.flatnonzero(np.asarray(loss_mask[1:], bool))
    return int(hits[0]) + 1 if hits.size else None


def pack_rows(pieces: Iterable[Piece], batch: int, seq: int, num_domains: int) -> Iterator[PackedBatch]:
    """Place each piece (<= seq tokens) whole into the current row or the next; pad row ends."""
    rows: list[list[Piece]] = []
    row: list[Piece] = []
    room = seq

    def flush_batch():
        flat = []
        for r in rows:
            flat.extend(r)
            used = sum(len(p[0]) for p in r)
            if used < seq:
                flat.append((np.zeros(seq - used, np.int32), np.zeros(seq - used, bool), -1))
        flat.extend([(np.zeros(seq, np.int32), np.zeros(seq, bool), -1)] * (batch - len(rows)))
        tokens = np.concatenate([p[0] for p in flat]).astype(np.int32)
        mask = np.concatenate([p[1] for p in flat]).astype(bool)
        lengths = [len(p[0]) for p in flat]
        domains = np.repeat(np.array([p[2] for p in flat], np.int32), lengths)
        ids = np.array([i + 1 if p[2] >= 0 else 0 for i, p in enumerate(flat)], np.int32)
        return _assemble(tokens, mask, domains, np.repeat(ids, lengths), batch, seq, num_domains)

    for piece in pieces:
        if len(piece[0]) > seq:
            raise ValueError(f"piece of {len(piece[0])} tokens is longer than a row ({seq})")
        if len(piece[0]) > room:
            rows.append(row)
            row, room = [], seq
            if len(rows) == batch:
                yield flush_batch()
                rows = []
        row.append(piece)
        room -= len(piece[0])
    if row:
        rows.append(row)
    if rows:
        yield flush_batch()
