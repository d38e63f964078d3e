package evqueue

import (
	"slices"
	"strconv"
	"testing"
	"time"
)

// drain pops every queued value.
func drain[T comparable](q *Queue[T]) []T {
	var got []T
	for q.Len() > 0 {
		v, _ := q.Pop()
		got = append(got, v)
	}
	return got
}

func TestFIFOWithoutDuplicates(t *testing.T) {
	q := New[string](4)
	for _, v := range []string{"a", "b", "a", "c", "b"} {
		q.Push(v)
	}
	if got := drain(q); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("%q", got)
	}
	q.Push("a") // taken, so it queues again
	if got := drain(q); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("%q", got)
	}
}

// A full queue drops new values; a collapsing one becomes its one
// "everything" value, then drops until that is taken.
func TestFull(t *testing.T) {
	for _, tc := range []struct {
		q    *Queue[string]
		want []string
	}{
		{New[string](3), []string{"0", "1", "2", "late"}},
		{NewCollapsing(3, "/"), []string{"/", "late"}},
	} {
		for i := range 10 {
			tc.q.Push(strconv.Itoa(i))
			if n := tc.q.Len(); n > 3 {
				t.Fatalf("holds %d", n)
			}
		}
		v, _ := tc.q.Pop()
		tc.q.Push("late")
		if got := append([]string{v}, drain(tc.q)...); !slices.Equal(got, tc.want) {
			t.Errorf("%q, want %q", got, tc.want)
		}
	}
}

// Pop waits for a value, and returns false once the queue is closed, even
// with values still queued.
func TestPopAndClose(t *testing.T) {
	type event struct{ path, token string }
	q := New[event](8)
	got := make(chan event)
	go func() {
		for {
			v, ok := q.Pop()
			if !ok {
				close(got)
				return
			}
			got <- v
		}
	}()
	time.Sleep(10 * time.Millisecond) // Pop is waiting
	q.Push(event{"/a", "t"})
	if v := <-got; v != (event{"/a", "t"}) {
		t.Fatal(v)
	}
	q.Close()
	q.Push(event{"/b", "t"})
	if v, ok := <-got; ok {
		t.Fatalf("after Close: %v", v)
	}
	if v, ok := q.Pop(); ok {
		t.Fatalf("Pop after Close: %v", v)
	}
}
