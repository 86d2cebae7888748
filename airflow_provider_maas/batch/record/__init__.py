"""The record of paid work: the state of a batch beside its destination, and what a try may do with it.

``state`` (the typed state of a batch), ``journal`` (where it lives, beside the destination;
``state_objects``: each object's bytes, read back whole or refused), ``ownership`` (one writer per
state, one owner per destination), ``recovery`` (the state is whole, or the task stops;
``second_record``: where the state is and job names a failed write kept; ``write_failures``: what a
failed write says), ``task_record`` (where a task instance's record across tries lives),
``create_guard`` (the create-in-flight marker every job-creating operator writes), ``origin`` (which
ENDPOINT wrote a results file).
"""
