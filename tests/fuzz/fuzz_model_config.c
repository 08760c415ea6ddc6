// libFuzzer target: ps_model_config_load on arbitrary bytes as a checkpoint's config.json.
#include "fuzz_util.h"
#include "ps_model.h"

#include <math.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write(0, "config.json", data, size);
    ps_model_config cfg;
    ps_error e = {0};
    int rc = ps_model_config_load(&cfg, path, &e);
    fuzz_note("model config", rc, e.msg);
    if (rc != 0) {
        FUZZ_FAIL_IF(fuzz_bad_error(&e));
        return 0;
    }
    // What the engine relies on once this returns success.
    FUZZ_FAIL_IF(cfg.n_layers < 1 || cfg.d_model < 1 || cfg.n_heads < 1 || cfg.n_kv_heads < 1 || cfg.d_head < 1 ||
        cfg.d_mlp < 1 || cfg.d_vocab < 1 || cfg.n_ctx < 1);
    FUZZ_FAIL_IF(cfg.n_heads % cfg.n_kv_heads != 0);
    FUZZ_FAIL_IF(cfg.arch == PS_ARCH_GPT2 && (cfg.d_head * cfg.n_heads != cfg.d_model || cfg.n_kv_heads != cfg.n_heads));
    FUZZ_FAIL_IF(cfg.bos_id < -1 || cfg.bos_id >= cfg.d_vocab || cfg.eos_id < -1 || cfg.eos_id >= cfg.d_vocab);
    // Norms divide by sqrt(mean + eps) and rotary embeddings raise theta to powers: both must be finite and positive.
    FUZZ_FAIL_IF(!(cfg.eps > 0) || !isfinite(cfg.eps));
    FUZZ_FAIL_IF(cfg.arch == PS_ARCH_LLAMA && (!(cfg.rope_theta > 0) || !isfinite(cfg.rope_theta)));
    FUZZ_FAIL_IF(memchr(cfg.dtype, 0, sizeof cfg.dtype) == NULL);
    return 0;
}
