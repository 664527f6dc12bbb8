"""keras-hub's self-attention call, `attention(hidden_states, ...)`, on one
of our attention layers."""

import keras


@keras.saving.register_keras_serializable(
    package="keras_attention.compat.keras_hub"
)
class SelfAttention(keras.layers.Layer):
    """Our attention layer behind keras-hub's self-attention call.

    keras-hub's Llama decoder calls its attention as `attention(
    hidden_states, attention_mask=..., cache=..., cache_update_index=...)`
    and takes back the output, and `(output, cache)` with a cache. This
    layer passes `hidden_states` as the query and the value of `attention`
    and the rest by keyword, so the cache is written by `attention` (with
    scatters). It holds no weights of its own.

    Args:
        attention: a `keras_attention.MultiHeadAttention` or
            `GroupedQueryAttention` (or its config), whose queries and
            values have the hidden size.
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        hidden_states: `(batch_size, length, hidden_dim)`.
        attention_mask: optional boolean `(batch_size, length, source_length)`
            mask, True means attend (`source_length` is the cache's length
            with a cache).
        cache: optional `(batch_size, 2, max_length, num_key_value_heads,
            head_dim)` cache, as `keras_attention.MultiHeadAttention`'s.
        cache_update_index: optional int or 0-d integer tensor, where the
            keys and values of `hidden_states` are written into `cache`.
        training: bool, whether dropout is active.

    Returns:
        The output `(batch_size, length, hidden_dim)`, and with a cache the
        updated cache: `(output, cache)`.
    """

    def __init__(self, attention, **kwargs):
        super().__init__(**kwargs)
        if isinstance(attention, dict):
            attention = keras.layers.deserialize(attention)
        self.attention = attention

    def build(self, hidden_states_shape):
        if not self.attention.built:
            self.attention.build(hidden_states_shape, hidden_states_shape)

    def call(
        self,
        hidden_states,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        training=None,
    ):
        return self.attention(
            hidden_states,
            hidden_states,
            attention_mask=attention_mask,
            cache=cache,
            cache_update_index=cache_update_index,
            training=training,
        )

    def get_config(self):
        config = super().get_config()
        config["attention"] = keras.layers.serialize(self.attention)
        return config
