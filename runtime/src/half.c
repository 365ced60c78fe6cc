/* IEEE binary16 <-> binary32, exact one way and round-to-nearest-even the other (numpy's). */
#include <string.h>

#include "px.h"

float px_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | man << 13;                 /* inf, NaN */
    } else if (exp) {
        bits = sign | (exp + 112) << 23 | man << 13;           /* normal: rebias 15 -> 127 */
    } else if (man) {                                          /* subnormal: normalise */
        int e = 113;
        while (!(man & 0x400)) { man <<= 1; --e; }
        bits = sign | (uint32_t)e << 23 | (man & 0x3ff) << 13;
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int px_float_to_half(float f, uint16_t *out)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    uint32_t exp = (bits >> 23) & 0xff, man = bits & 0x7fffff;
    if (exp == 0xff) {                                         /* inf or NaN */
        *out = (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
        return 0;
    }
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f) { *out = sign | 0x7c00; return 0; }
    if (e <= 0) {                                              /* subnormal or zero in half */
        if (e < -10) { *out = sign; return 1; }
        man |= 0x800000;
        int shift = 14 - e;                                    /* 24-bit mantissa -> 10-e bits */
        uint32_t h = man >> shift, rest = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (h & 1))) ++h;
        *out = (uint16_t)(sign | h);
        return 1;
    }
    uint32_t h = (uint32_t)e << 10 | man >> 13, rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;     /* may carry into the exponent */
    *out = (uint16_t)(sign | h);
    return (h & 0x7c00) != 0x7c00;
}
