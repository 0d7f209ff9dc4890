"""The one hypothesis strategy for small specs, as the issues define them: 1-4 stages of 1-3
blocks, widths 8-32, 1-4 image channels, every head (top with avg/max pooling, or features
pooled or not). Test files narrow or widen it through arguments, never by writing their own.

``blocks=S.BLOCK_KINDS`` (or ``block_specs()``) also draws the block's structure: the kind
(basic, bottleneck, pre-activation, each in a style that has it: pre-activation only in
"keras"), groups (1, 2, 4), width per group, expansion and which block of a stage strides; at
the sizes where that stays cheap (widths 4-16, 1-2 blocks per stage)."""

from hypothesis import strategies as st

from shared import spec as S

HEADS = ((True, "avg"), (True, "max"), (False, "avg"), (False, "max"), (False, None))
GROUPS = (1, 2, 4)
WIDTHS_PER_GROUP = (16, 32, 64, 128)
EXPANSIONS = (1, 2, 4)


@st.composite
def small_specs(draw, styles=S.STYLES, classes=(1, 20), heads=HEADS, mixed=False, blocks=None,
                widths=(8, 32), per_stage=(1, 3), **fixed):
    """A spec with one style's conventions; ``mixed=True`` draws stride placement, conv bias and
    epsilon independently instead (combinations no preset has). ``blocks``: None keeps the
    bottleneck with one group (as ResNet-50); a tuple of block kinds draws one of them (in a
    style that has it) with its groups, width per group, expansion and stride block. ``fixed``
    fields are set as given."""
    include_top, pooling = draw(st.sampled_from(heads))
    fields = dict(
        depths=tuple(draw(st.lists(st.integers(*per_stage), min_size=1, max_size=4))),
        width=draw(st.integers(*widths)),
        image_channels=draw(st.integers(1, 4)),
        num_classes=draw(st.integers(*classes)),
        include_top=include_top,
        pooling=pooling,
    )
    if blocks is None:
        style = draw(st.sampled_from(styles))
    else:
        kinds = [(s, b) for s in styles for b in blocks if S.conventions(s, b) is not None]
        if not kinds:
            raise ValueError(f"blocks: none of {blocks} exists in style(s) {styles}")
        style, block = draw(st.sampled_from(kinds))
        fields.update(block=block, expansion=draw(st.sampled_from(EXPANSIONS)),
                      stride_block=draw(st.sampled_from(S.STRIDE_BLOCK)))
        if block != "basic":
            # Stage 1's inner width int(width * width_per_group / 64) must be at least 1.
            fields.update(groups=draw(st.sampled_from(GROUPS)), width_per_group=draw(
                st.sampled_from([w for w in WIDTHS_PER_GROUP if fields["width"] * w >= 64])))
    if mixed:
        fields.update(stride_on=draw(st.sampled_from(S.STRIDE_ON)), conv_bias=draw(st.booleans()),
                      bn_epsilon=draw(st.sampled_from([1e-5, 1.001e-5, 1e-3])))
    return S.preset_spec(style, **{**fields, **fixed})


def block_specs(**kwargs):
    """``small_specs`` over every block kind, at the sizes that keep that cheap."""
    return small_specs(**{"blocks": S.BLOCK_KINDS, "widths": (4, 16), "per_stage": (1, 2), **kwargs})
