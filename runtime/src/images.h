/* Reading inputs for proxcl-run: IDX files (raw; the MNIST family's format) and NumPy .npy arrays,
 * as float32 values with their shape.  Part of the command, not of the library. */
#ifndef PX_IMAGES_H
#define PX_IMAGES_H

#include <stdint.h>

#include "proxcl.h"

typedef struct {
    float *values;     /* row-major float32, or NULL when the file holds bytes: */
    const unsigned char *bytes;   /* uint8 values (IDX type 0x08, .npy |u1), kept as they are */
    void *base;        /* what to free */
    int rank;
    int64_t shape[8];
    int64_t count;
} px_array;

/* An IDX (raw, not gzip-compressed) or .npy file (by its first bytes) as float32. */
proxcl_status px_read_array(const char *path, px_array *out, proxcl_error *err);
/* Images [H, W], [N, H, W] or [N, C, H, W] as [N, C, H, W] (proxcl.predict.read_images). */
proxcl_status px_read_images(const char *path, px_array *out, proxcl_error *err);
void px_array_free(px_array *a);
/* value i as float32 */
static inline float px_array_at(const px_array *a, int64_t i)
{
    return a->values ? a->values[i] : (float)a->bytes[i];
}

#endif
