/* Cancel keys. The BackendKeyData a client is given is its connection id under a keyed
 * permutation of 62 bits (two 31-bit halves, as PostgreSQL's pid and key are positive int32s):
 * a cancel request's pair is turned back into the id it was made for, and the connection with
 * that id is the one to cancel. So no table maps keys to clients, and no two live clients can
 * ever share a key.
 *
 * The permutation is a balanced Feistel network of CANCEL_ROUNDS rounds whose round function is
 * SipHash-2-4 under a 128-bit secret drawn from the kernel when the switch is made. Knowing one's
 * own key (and any number of them) tells nothing usable about another client's: guessing one
 * is a 1 in 2^62 try per live client, as with random keys. */

#include "switch.h"

#define CANCEL_ROUNDS 8
#define HALF_MASK 0x7fffffffu
#define SLOT_BITS 30 /* conn_new keeps slot + 1 below 2^30 */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                               \
    do {                                                                                       \
        v0 += v1;                                                                              \
        v1 = ROTL(v1, 13);                                                                     \
        v1 ^= v0;                                                                              \
        v0 = ROTL(v0, 32);                                                                     \
        v2 += v3;                                                                              \
        v3 = ROTL(v3, 16);                                                                     \
        v3 ^= v2;                                                                              \
        v0 += v3;                                                                              \
        v3 = ROTL(v3, 21);                                                                     \
        v3 ^= v0;                                                                              \
        v2 += v1;                                                                              \
        v1 = ROTL(v1, 17);                                                                     \
        v1 ^= v2;                                                                              \
        v2 = ROTL(v2, 32);                                                                     \
    } while (0)

/* SipHash-2-4 of one 8-byte message `m` (its bytes read little-endian) under key k[0], k[1]
 * (the key's bytes 0-7 and 8-15, little-endian). */
static uint64_t siphash24_u64(const uint64_t k[2], uint64_t m)
{
    uint64_t v0 = k[0] ^ 0x736f6d6570736575ull, v1 = k[1] ^ 0x646f72616e646f6dull;
    uint64_t v2 = k[0] ^ 0x6c7967656e657261ull, v3 = k[1] ^ 0x7465646279746573ull;
    const uint64_t last = (uint64_t)8 << 56; /* the length byte of the final, empty block */
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* The reference implementation's answer for key 00..0f and message 00..07: 0 if ours agrees. */
int cancel_selftest(void)
{
    const uint64_t k[2] = {0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};
    return siphash24_u64(k, 0x0706050403020100ull) == 0x93f5f5799a932462ull ? 0 : -1;
}

static uint32_t round_f(const struct sw *sw, uint32_t round, uint32_t half)
{
    return (uint32_t)siphash24_u64(sw->cancel_secret, ((uint64_t)round << 32) | half) & HALF_MASK;
}

int cancel_key_make(const struct sw *sw, uint64_t id, uint32_t *pid, uint32_t *key)
{
    uint64_t slot1 = id & 0xffffffffu, gen = id >> 32;
    if (slot1 == 0 || slot1 >= ((uint64_t)1 << SLOT_BITS) || gen > 0xffffffffu)
        return -1;
    uint64_t x = (gen << SLOT_BITS) | slot1; /* 62 bits */
    uint32_t l = (uint32_t)(x >> 31) & HALF_MASK, r = (uint32_t)x & HALF_MASK;
    for (uint32_t i = 0; i < CANCEL_ROUNDS; i++) {
        uint32_t t = l ^ round_f(sw, i, r);
        l = r;
        r = t;
    }
    *pid = l;
    *key = r;
    return 0;
}

uint64_t cancel_key_id(const struct sw *sw, uint32_t pid, uint32_t key)
{
    if (pid > HALF_MASK || key > HALF_MASK)
        return 0; /* never given out: both halves are positive int32s */
    uint32_t l = pid, r = key;
    for (uint32_t i = CANCEL_ROUNDS; i-- > 0;) {
        uint32_t t = r ^ round_f(sw, i, l);
        r = l;
        l = t;
    }
    uint64_t x = ((uint64_t)l << 31) | r;
    uint64_t slot1 = x & (((uint64_t)1 << SLOT_BITS) - 1), gen = x >> SLOT_BITS;
    return slot1 == 0 ? 0 : (gen << 32) | slot1;
}
