"""The one hypothesis strategy for small specs, as the issues define them: 1-4 stages of 1-3
blocks, widths 8-32, 1-4 image channels, every head (top with avg/max pooling, or features
pooled or not). Test files narrow it through arguments, never by writing their own."""

from hypothesis import strategies as st

from shared import spec as S

HEADS = ((True, "avg"), (True, "max"), (False, "avg"), (False, "max"), (False, None))


@st.composite
def small_specs(draw, styles=S.STYLES, classes=(1, 20), heads=HEADS, mixed=False, **fixed):
    """A spec with one style's conventions; ``mixed=True`` draws stride placement, conv bias and
    epsilon independently instead (combinations no preset has). ``fixed`` fields are set as given."""
    include_top, pooling = draw(st.sampled_from(heads))
    fields = dict(
        depths=tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))),
        width=draw(st.integers(8, 32)),
        image_channels=draw(st.integers(1, 4)),
        num_classes=draw(st.integers(*classes)),
        include_top=include_top,
        pooling=pooling,
    )
    if mixed:
        fields.update(stride_on=draw(st.sampled_from(S.STRIDE_ON)), conv_bias=draw(st.booleans()),
                      bn_epsilon=draw(st.sampled_from([1e-5, 1.001e-5, 1e-3])))
    return S.preset_spec(draw(st.sampled_from(styles)), **{**fields, **fixed})
