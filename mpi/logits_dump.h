/* logits_dump.h - collect the forward pass's logits on every rank and write them from rank 0.
 *
 * mp_logits_observe is an ep_forward.h observer: it keeps the "logits" rows of the rank's own
 * sequences (plan.h: mp_seq_range). mp_logits_dump_write gathers them in sequence order on rank 0,
 * which writes io/logits_file.h's file. Collective over MPI_COMM_WORLD (write), local otherwise. */
#ifndef MP_LOGITS_DUMP_H
#define MP_LOGITS_DUMP_H
#include <stdint.h>

typedef struct mp_logits_dump mp_logits_dump;

int mp_logits_dump_create(int n_seq, int seq_len, int vocab, mp_logits_dump **out);
void mp_logits_dump_free(mp_logits_dump *d);
void mp_logits_observe(void *ctx, const char *what, int index, int seq0, int nseq, int width, const float *rows);
int mp_logits_dump_write(mp_logits_dump *d, const char *path);

#endif
